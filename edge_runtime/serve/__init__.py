"""``floraedge serve``: the classifier as a web page and an HTTP API, on the torch-free runtime."""
