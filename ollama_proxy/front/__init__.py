"""Every request's way in: the Site and its request class, the front door (request ids, Host and
CORS checks, auth, stream limits, drain) and the per-request record."""
