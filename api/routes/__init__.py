"""HTTP routes, one module per resource; each is thin (validate, authorise, call the
kernel, shape the answer)."""
