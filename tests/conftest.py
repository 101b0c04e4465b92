"""Shared test set-up: quiet TensorFlow, a fixed Keras backend default, shared fixtures."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

pytest_plugins = ["tests.kernel_fixtures", "tests.api_fixtures"]
