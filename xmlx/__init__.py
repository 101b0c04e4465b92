"""xmlx package."""
