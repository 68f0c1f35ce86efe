"""The Litestar application: the app factory, middleware, guards and page helpers (with
app/routes/, the only code that knows Litestar).
"""
