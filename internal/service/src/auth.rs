//! Accounts and sessions: register, log in, rotate refresh tokens, log out, and the admin
//! operations on users.

use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::{Email, PageRequest, Password, Role, Sort, SortDir};
use repo::db::users::{InsertUserError, NewUser, UserRow};
use repo::db::{Page, refresh_tokens, users};
use sea_orm::{DatabaseConnection, TransactionTrait};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::jwt::{Caller, JwtKeys};
use crate::password::{PasswordHasher, UNUSABLE_PASSWORD_HASH};

#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

impl From<UserRow> for User {
    fn from(row: UserRow) -> Self {
        Self { id: row.id, email: row.email, role: row.role.parse().unwrap_or(Role::User), created_at: row.created_at }
    }
}

#[derive(Debug, Clone)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
}

pub const USER_SORT_FIELDS: &[&str] = &["created_at", "email", "role"];

#[derive(Clone)]
pub struct AuthService {
    db: DatabaseConnection,
    hasher: PasswordHasher,
    jwt: JwtKeys,
    refresh_ttl: Duration,
}

impl AuthService {
    pub fn new(db: DatabaseConnection, hasher: PasswordHasher, jwt: JwtKeys, refresh_ttl: Duration) -> Self {
        Self { db, hasher, jwt, refresh_ttl }
    }

    pub fn jwt(&self) -> &JwtKeys {
        &self.jwt
    }

    pub async fn register(&self, email: &str, password: &str) -> Result<User> {
        let email = Email::parse(email)?;
        let password = Password::parse(password)?;
        let hash = self.hasher.hash(password.expose()).await?;
        let row = users::insert(
            &self.db,
            NewUser { id: Uuid::now_v7(), email: email.as_str(), password_hash: &hash, role: Role::User.as_str() },
        )
        .await
        .map_err(|err| match err {
            InsertUserError::EmailTaken => Error::EmailTaken,
            InsertUserError::Db(db) => db.into(),
        })?;
        Ok(row.into())
    }

    /// Unknown email and wrong password answer the same error after the same work, so the
    /// endpoint does not reveal which accounts exist.
    pub async fn login(&self, email: &str, password: &str) -> Result<TokenPair> {
        let email = email.trim().to_lowercase();
        let row = users::find_by_email(&self.db, &email).await?;
        let stored = row.as_ref().map(|r| r.password_hash.clone());
        if !self.hasher.verify(stored, password).await? {
            return Err(Error::BadCredentials);
        }
        let user = User::from(row.expect("verified, so the user exists"));
        self.start_session(&user, Uuid::now_v7()).await
    }

    /// Exchanges a refresh token for a new pair. The old token is spent; presenting a spent
    /// token again means it was stolen or replayed, so the whole family is revoked.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair> {
        let txn = self.db.begin().await?;
        let row =
            refresh_tokens::find_by_hash(&txn, &hash_token(refresh_token)).await?.ok_or(Error::BadRefreshToken)?;
        if row.revoked_at.is_some() || row.expires_at <= Utc::now() {
            return Err(Error::BadRefreshToken);
        }
        if row.used_at.is_some() || !refresh_tokens::mark_used(&txn, row.id).await? {
            refresh_tokens::revoke_family(&txn, row.family_id).await?;
            txn.commit().await?;
            tracing::warn!(user_id = %row.user_id, family_id = %row.family_id, "refresh token replayed; family revoked");
            return Err(Error::BadRefreshToken);
        }
        let user = users::find(&txn, row.user_id).await?.ok_or(Error::BadRefreshToken)?;
        let pair = self.issue_pair(&txn, &user.into(), row.family_id).await?;
        txn.commit().await?;
        Ok(pair)
    }

    /// Ends the login the refresh token belongs to (every token of its family).
    pub async fn logout(&self, refresh_token: &str) -> Result<()> {
        let row =
            refresh_tokens::find_by_hash(&self.db, &hash_token(refresh_token)).await?.ok_or(Error::BadRefreshToken)?;
        refresh_tokens::revoke_family(&self.db, row.family_id).await?;
        Ok(())
    }

    pub async fn me(&self, caller: &Caller) -> Result<User> {
        let row = users::find(&self.db, caller.user_id).await?.ok_or(Error::Unauthenticated)?;
        Ok(row.into())
    }

    /// The public name of any user (the part of the email before the `@`).
    pub async fn display_name(&self, id: Uuid) -> Result<String> {
        let row = users::find(&self.db, id).await?.ok_or(Error::NotFound("user"))?;
        Ok(domain::user::display_name(&row.email))
    }

    pub async fn list_users(&self, caller: &Caller, page: PageRequest, sort: Option<&str>) -> Result<Page<User>> {
        caller.require_admin()?;
        let sort = Sort::parse(sort, USER_SORT_FIELDS, Sort { field: "created_at", dir: SortDir::Asc })?;
        let rows = users::list(&self.db, page.offset(), page.page_size, sort.field, sort.dir == SortDir::Desc).await?;
        Ok(Page { items: rows.items.into_iter().map(User::from).collect(), total: rows.total })
    }

    /// Creates an admin, or promotes the existing account with that email (its password is
    /// left as it was). Returns the user and whether it was created.
    pub async fn create_admin(&self, email: &str, password: &str) -> Result<(User, bool)> {
        let email = Email::parse(email)?;
        let password = Password::parse(password)?;
        if users::promote(&self.db, email.as_str()).await? {
            let row = users::find_by_email(&self.db, email.as_str()).await?.ok_or(Error::NotFound("user"))?;
            return Ok((row.into(), false));
        }
        let hash = self.hasher.hash(password.expose()).await?;
        let row = users::insert(
            &self.db,
            NewUser { id: Uuid::now_v7(), email: email.as_str(), password_hash: &hash, role: Role::Admin.as_str() },
        )
        .await
        .map_err(|err| match err {
            InsertUserError::EmailTaken => Error::EmailTaken,
            InsertUserError::Db(db) => db.into(),
        })?;
        Ok((row.into(), true))
    }

    /// Creates `count` shopper accounts in bulk (one INSERT per thousand, one shared hash of
    /// an unknowable password) and returns an access token for each, valid for `ttl`.
    pub async fn create_shoppers(&self, count: usize, ttl: Duration) -> Result<Vec<String>> {
        let run = Uuid::now_v7().simple().to_string();
        let hash = UNUSABLE_PASSWORD_HASH.as_str();
        let mut tokens = Vec::with_capacity(count);
        let mut start = 0;
        while start < count {
            let end = (start + 1000).min(count);
            let ids: Vec<Uuid> = (start..end).map(|_| Uuid::now_v7()).collect();
            let emails: Vec<String> = (start..end).map(|i| format!("shopper-{i}-{run}@load.spike.test")).collect();
            let rows: Vec<NewUser> = ids
                .iter()
                .zip(&emails)
                .map(|(id, email)| NewUser { id: *id, email, password_hash: hash, role: Role::User.as_str() })
                .collect();
            users::insert_many(&self.db, &rows).await?;
            for id in ids {
                tokens.push(self.jwt.issue_for(id, Role::User, ttl)?);
            }
            start = end;
        }
        Ok(tokens)
    }

    async fn start_session(&self, user: &User, family_id: Uuid) -> Result<TokenPair> {
        self.issue_pair(&self.db, user, family_id).await
    }

    async fn issue_pair(&self, db: &impl sea_orm::ConnectionTrait, user: &User, family_id: Uuid) -> Result<TokenPair> {
        let refresh_token = hex::encode(rand::random::<[u8; 32]>());
        let expires_at = Utc::now() + self.refresh_ttl;
        refresh_tokens::insert(db, user.id, family_id, &hash_token(&refresh_token), expires_at).await?;
        Ok(TokenPair {
            access_token: self.jwt.issue(user.id, user.role)?,
            refresh_token,
            expires_in: self.jwt.access_ttl.as_secs(),
        })
    }
}

/// Refresh tokens are 256 random bits, so a fast hash is enough: nobody can brute-force the
/// preimage, and a leaked table holds nothing usable.
fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
