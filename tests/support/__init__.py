"""Helpers the tests share: servers, pipe clients, a browser, externals and fakes."""
