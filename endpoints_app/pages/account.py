"""Sign-in, sign-out and the user's own personal access tokens.

Tokens are created and revoked through ``services.tokens`` (which writes the audit rows), the
same functions the API and the CLI call. A new token is shown once, in the answer to the POST
that created it, and never stored anywhere but as its digest.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.views.decorators.http import require_http_methods, require_POST

from endpoints_app.authenticated import AuthenticatedHttpRequest
from endpoints_app.models import AccessToken
from endpoints_app.pages.errors import error_page
from endpoints_app.pages.forms.account import ThrottledAuthenticationForm
from endpoints_app.services import tokens as token_services

MAX_COMMENT = 255


def _tokens_page(
    request: AuthenticatedHttpRequest, *, new_token: str = "", comment: str = "", error: str = "", status: int = 200
) -> HttpResponse:
    response = render(
        request,
        "dashboard/tokens.html",
        {
            "nav": "tokens",
            "tokens": AccessToken.objects.filter(user=request.user).order_by("revoked_at", "-created_at"),
            "new_token": new_token,
            "comment": comment,
            "error": error,
            "max_comment": MAX_COMMENT,
            "host": request.build_absolute_uri("/").rstrip("/"),
        },
        status=status,
    )
    if new_token:
        response["Cache-Control"] = "no-store"  # the only copy of the token: keep it out of caches
    return response


@login_required
@require_http_methods(["GET", "POST"])
def token_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _tokens_page(request)
    comment = request.POST.get("comment", "").strip()
    if len(comment) > MAX_COMMENT:
        return _tokens_page(
            request, comment=comment, error=f"The comment may be at most {MAX_COMMENT} characters.", status=400
        )
    _, raw = token_services.create_token(user=request.user, comment=comment, actor=request.user)
    return _tokens_page(request, new_token=raw, status=201)


@login_required
@require_POST
def token_revoke(request: AuthenticatedHttpRequest, token_id: int) -> HttpResponse:
    # Someone else's token does not exist here (404), like an endpoint one may not see.
    token = AccessToken.objects.filter(pk=token_id, user=request.user).select_related("user").first()
    if token is None:
        return error_page(request, 404, f"Token {token_id} does not exist")
    if token.revoked_at is None:
        token_services.revoke_token(token=token, actor=request.user)
        messages.success(request, f"Token {token.hint}… is revoked: it no longer works.")
    return redirect("token_list")


class LoginView(auth_views.LoginView):
    """Django's sign-in; an address over the failed sign-in limit gets the form back with the
    reason and 429 (``auth_throttle``)."""

    form_class = ThrottledAuthenticationForm
    redirect_authenticated_user = True

    def form_invalid(self, form: AuthenticationForm) -> HttpResponse:
        response = super().form_invalid(form)
        if isinstance(form, ThrottledAuthenticationForm) and form.throttle is not None:  # it is (form_class)
            response.status_code = 429
            response["Retry-After"] = str(form.throttle.retry_after)
        return response


urlpatterns = [
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("account/tokens/", token_list, name="token_list"),
    path("account/tokens/<int:token_id>/revoke", token_revoke, name="token_revoke"),
]
