"""Forms of the dashboard, one module per page area: the endpoint editor (``endpoint``, with the
external models' provider fields in ``external_model``), the AI gateway, secrets, change requests
(``approvals``) and sign-in (``account``); ``common`` holds what more than one of them says.

Forms are thin. They read what the user typed and turn it into the JSON body the API takes; every
rule about a valid config stays in endpoints_app.validation and the services.
"""
