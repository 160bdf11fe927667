//! Bearer authentication for poem-openapi operations, and the per-user write limit.
//!
//! An operation that takes a [`BearerAuth`] argument is authenticated: poem-openapi pulls
//! the token out of `Authorization: Bearer ...`, [`check_bearer`] verifies it (signature,
//! algorithm, expiry) and, for write methods, charges the caller's rate limit. Swagger UI
//! shows the scheme, so its "Authorize" button works. [`BearerAuth::admin`] is the RBAC
//! guard.

use std::sync::Arc;

use poem::Request;
use poem::http::Method;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;
use service::Caller;
use service::jwt::JwtKeys;

use crate::error::ApiError;
use crate::rate_limit::Limits;

/// What the bearer checker needs; added to every request as data.
pub struct AuthContext {
    pub jwt: JwtKeys,
    pub limits: Arc<Limits>,
}

/// A verified access token.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_bearer")]
pub struct BearerAuth(pub Caller);

impl BearerAuth {
    pub fn caller(&self) -> &Caller {
        &self.0
    }

    /// The caller, if they are an admin; 403 otherwise.
    pub fn admin(&self) -> Result<&Caller, ApiError> {
        self.0.require_admin()?;
        Ok(&self.0)
    }
}

async fn check_bearer(req: &Request, bearer: Bearer) -> poem::Result<Caller> {
    let context = req.data::<Arc<AuthContext>>().expect("the router adds AuthContext to every request");
    let caller = context.jwt.verify(&bearer.token).map_err(ApiError::from)?;
    if is_write(req.method()) {
        context.limits.check_user(caller.user_id)?;
    }
    Ok(caller)
}

fn is_write(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}
