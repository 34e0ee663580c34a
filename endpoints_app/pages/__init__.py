"""Server-rendered dashboard pages. Each module owns its pages and exports ``urlpatterns``.

Every page asks endpoints_app.access for what the user may see and do; actions hidden in a page
are refused on the server too.
"""
