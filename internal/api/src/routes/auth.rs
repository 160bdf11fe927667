//! `POST /auth/register`, `/auth/login`, `/auth/refresh`, `/auth/logout`.

use chrono::{DateTime, Utc};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use service::auth::{AuthService, TokenPair, User};

use super::ApiTags;
use crate::envelope::{Envelope, JsonBody, ok};
use crate::error::ApiResult;

pub struct AuthApi {
    pub auth: AuthService,
}

#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// A valid email address; it becomes the login name (case-insensitive).
    pub email: String,
    /// At least 8 characters.
    pub password: String,
}

#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Object)]
pub struct UserResponse {
    pub id: String,
    pub email: String,
    /// `user` or `admin`.
    pub role: String,
    pub created_at: DateTime<Utc>,
}

impl From<User> for UserResponse {
    fn from(user: User) -> Self {
        Self {
            id: user.id.to_string(),
            email: user.email,
            role: user.role.as_str().to_owned(),
            created_at: user.created_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct TokenResponse {
    /// Send it as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Exchange it at `/auth/refresh` before the access token expires; single use.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

impl From<TokenPair> for TokenResponse {
    fn from(pair: TokenPair) -> Self {
        Self {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
            token_type: "Bearer".to_owned(),
            expires_in: pair.expires_in,
        }
    }
}

#[derive(Debug, Object)]
pub struct LoggedOut {
    pub logged_out: bool,
}

#[derive(ApiResponse)]
pub enum RegisterResponse {
    /// The account was created.
    #[oai(status = 201)]
    Created(Json<Envelope<UserResponse>>),
}

#[derive(ApiResponse)]
pub enum TokensResponse {
    /// A new access token and refresh token.
    #[oai(status = 200)]
    Ok(Json<Envelope<TokenResponse>>),
}

#[derive(ApiResponse)]
pub enum LogoutResponse {
    /// Every refresh token of this login is revoked.
    #[oai(status = 200)]
    Ok(Json<Envelope<LoggedOut>>),
}

#[OpenApi(prefix_path = "/auth", tag = "ApiTags::Auth")]
impl AuthApi {
    /// Register an account
    ///
    /// 400 for a malformed email or a password shorter than 8 characters, 409 `EMAIL_TAKEN`
    /// when the email is registered already.
    #[oai(path = "/register", method = "post")]
    async fn register(&self, body: JsonBody<RegisterRequest>) -> ApiResult<RegisterResponse> {
        let user = self.auth.register(&body.0.email, &body.0.password).await?;
        Ok(RegisterResponse::Created(ok(user.into())))
    }

    /// Log in
    ///
    /// An unknown email and a wrong password get the same 401 `INVALID_CREDENTIALS`.
    #[oai(path = "/login", method = "post")]
    async fn login(&self, body: JsonBody<LoginRequest>) -> ApiResult<TokensResponse> {
        let pair = self.auth.login(&body.0.email, &body.0.password).await?;
        Ok(TokensResponse::Ok(ok(pair.into())))
    }

    /// Rotate the refresh token
    ///
    /// Returns a new pair; the presented refresh token stops working. Presenting a spent
    /// token again revokes the whole login (401 `INVALID_REFRESH_TOKEN`).
    #[oai(path = "/refresh", method = "post")]
    async fn refresh(&self, body: JsonBody<RefreshRequest>) -> ApiResult<TokensResponse> {
        let pair = self.auth.refresh(&body.0.refresh_token).await?;
        Ok(TokensResponse::Ok(ok(pair.into())))
    }

    /// Log out
    ///
    /// Revokes the refresh token and every other token of the same login.
    #[oai(path = "/logout", method = "post")]
    async fn logout(&self, body: JsonBody<RefreshRequest>) -> ApiResult<LogoutResponse> {
        self.auth.logout(&body.0.refresh_token).await?;
        Ok(LogoutResponse::Ok(ok(LoggedOut { logged_out: true })))
    }
}
