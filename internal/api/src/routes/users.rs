//! `GET /users/me`, `GET /users/{id}/name` and `GET /admin/users`.

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use service::auth::AuthService;
use uuid::Uuid;

use super::ApiTags;
use super::auth::UserResponse;
use crate::auth::BearerAuth;
use crate::envelope::{Envelope, PageOf, ok};
use crate::error::ApiResult;

pub struct UsersApi {
    pub auth: AuthService,
}

#[derive(ApiResponse)]
pub enum MeResponse {
    /// The signed-in user.
    #[oai(status = 200)]
    Ok(Json<Envelope<UserResponse>>),
}

/// What other users may see of someone.
#[derive(Debug, Object)]
pub struct PublicUserResponse {
    pub id: String,
    /// The part of the user's email before the `@` (at most 24 characters).
    pub display_name: String,
}

#[derive(ApiResponse)]
pub enum PublicUserResponseOf {
    /// The user's public name.
    #[oai(status = 200)]
    Ok(Json<Envelope<PublicUserResponse>>),
}

#[derive(ApiResponse)]
pub enum UserListResponse {
    /// A page of users.
    #[oai(status = 200)]
    Ok(Json<Envelope<PageOf<UserResponse>>>),
}

#[OpenApi(tag = "ApiTags::Users")]
impl UsersApi {
    /// The signed-in user
    #[oai(path = "/users/me", method = "get")]
    async fn me(&self, auth: BearerAuth) -> ApiResult<MeResponse> {
        let user = self.auth.me(auth.caller()).await?;
        Ok(MeResponse::Ok(ok(user.into())))
    }

    /// A user's public name
    ///
    /// No sign-in needed: the live page names an auction's leader and winner with it.
    /// 404 `NOT_FOUND` for an unknown id.
    #[oai(path = "/users/:id/name", method = "get")]
    async fn display_name(&self, id: Path<Uuid>) -> ApiResult<PublicUserResponseOf> {
        let display_name = self.auth.display_name(id.0).await?;
        Ok(PublicUserResponseOf::Ok(ok(PublicUserResponse { id: id.0.to_string(), display_name })))
    }

    /// All users (admin)
    ///
    /// `sort` is `created_at`, `email` or `role`, with `,asc` or `,desc`.
    #[oai(path = "/admin/users", method = "get")]
    async fn list(
        &self,
        auth: BearerAuth,
        page: Query<Option<u64>>,
        page_size: Query<Option<u64>>,
        sort: Query<Option<String>>,
    ) -> ApiResult<UserListResponse> {
        let caller = auth.admin()?;
        let request = domain::PageRequest::parse(page.0, page_size.0)?;
        let users = self.auth.list_users(caller, request, sort.0.as_deref()).await?;
        Ok(UserListResponse::Ok(ok(PageOf::new(users, request, UserResponse::from))))
    }
}
