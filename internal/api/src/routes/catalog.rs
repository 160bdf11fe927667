//! `/products`: public reads, admin writes.

use chrono::{DateTime, Utc};
use domain::PageRequest;
use domain::catalog::{NewProduct, ProductPatch};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use service::catalog::{CatalogService, Product};
use uuid::Uuid;

use super::ApiTags;
use crate::auth::BearerAuth;
use crate::envelope::{Envelope, JsonBody, PageOf, ok};
use crate::error::ApiResult;

pub struct CatalogApi {
    pub catalog: CatalogService,
}

#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProductRequest {
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Decimal string, at most 2 decimals, e.g. "199.00".
    pub price: String,
    pub stock: i64,
}

#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateProductRequest {
    pub title: Option<String>,
    pub description: Option<String>,
    /// Decimal string, at most 2 decimals.
    pub price: Option<String>,
    pub stock: Option<i64>,
}

#[derive(Debug, Object)]
pub struct ProductResponse {
    pub id: String,
    pub title: String,
    pub description: String,
    /// Decimal string, e.g. "199.00".
    pub price: String,
    pub stock: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Product> for ProductResponse {
    fn from(p: Product) -> Self {
        Self {
            id: p.id.to_string(),
            title: p.title,
            description: p.description,
            price: p.price.to_string(),
            stock: p.stock,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct Deleted {
    pub id: String,
    pub deleted: bool,
}

#[derive(ApiResponse)]
pub enum ProductCreated {
    /// The product was created.
    #[oai(status = 201)]
    Created(Json<Envelope<ProductResponse>>),
}

#[derive(ApiResponse)]
pub enum ProductFound {
    /// The product.
    #[oai(status = 200)]
    Ok(Json<Envelope<ProductResponse>>),
}

#[derive(ApiResponse)]
pub enum ProductList {
    /// A page of products.
    #[oai(status = 200)]
    Ok(Json<Envelope<PageOf<ProductResponse>>>),
}

#[derive(ApiResponse)]
pub enum ProductDeleted {
    /// The product is gone from the catalog (orders keep their lines).
    #[oai(status = 200)]
    Ok(Json<Envelope<Deleted>>),
}

#[OpenApi(prefix_path = "/products", tag = "ApiTags::Catalog")]
impl CatalogApi {
    /// List products
    ///
    /// `q` searches titles (case-insensitive substring). `sort` is one of `created_at`,
    /// `updated_at`, `title`, `price`, `stock`, with `,asc` or `,desc`.
    #[oai(path = "/", method = "get")]
    async fn list(
        &self,
        page: Query<Option<u64>>,
        page_size: Query<Option<u64>>,
        sort: Query<Option<String>>,
        q: Query<Option<String>>,
    ) -> ApiResult<ProductList> {
        let request = PageRequest::parse(page.0, page_size.0)?;
        let products = self.catalog.list(request, sort.0.as_deref(), q.0.as_deref()).await?;
        Ok(ProductList::Ok(ok(PageOf::new(products, request, ProductResponse::from))))
    }

    /// Get a product
    ///
    /// Served from the Redis cache when it can be; the stock shown is current (every stock
    /// change drops the cached entry).
    #[oai(path = "/:id", method = "get")]
    async fn get(&self, id: Path<Uuid>) -> ApiResult<ProductFound> {
        let product = self.catalog.get(id.0).await?;
        Ok(ProductFound::Ok(ok(product.into())))
    }

    /// Create a product (admin)
    #[oai(path = "/", method = "post")]
    async fn create(&self, auth: BearerAuth, body: JsonBody<CreateProductRequest>) -> ApiResult<ProductCreated> {
        let body = body.0;
        let new = NewProduct::parse(&body.title, body.description.as_deref().unwrap_or(""), &body.price, body.stock)?;
        let product = self.catalog.create(auth.caller(), new).await?;
        Ok(ProductCreated::Created(ok(product.into())))
    }

    /// Change a product (admin)
    ///
    /// Only the fields present (and not `null`) change; `{}` changes nothing and returns the
    /// product.
    #[oai(path = "/:id", method = "patch")]
    async fn update(
        &self,
        auth: BearerAuth,
        id: Path<Uuid>,
        body: JsonBody<UpdateProductRequest>,
    ) -> ApiResult<ProductFound> {
        let body = body.0;
        let patch =
            ProductPatch::parse(body.title.as_deref(), body.description.as_deref(), body.price.as_deref(), body.stock)?;
        let product = self.catalog.update(auth.caller(), id.0, patch).await?;
        Ok(ProductFound::Ok(ok(product.into())))
    }

    /// Delete a product (admin)
    #[oai(path = "/:id", method = "delete")]
    async fn delete(&self, auth: BearerAuth, id: Path<Uuid>) -> ApiResult<ProductDeleted> {
        self.catalog.delete(auth.caller(), id.0).await?;
        Ok(ProductDeleted::Ok(ok(Deleted { id: id.0.to_string(), deleted: true })))
    }
}
