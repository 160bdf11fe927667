//! The catalog: admin writes, public reads, and the cache-aside product cache.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::catalog::{NewProduct, ProductPatch};
use domain::page::SEARCH_MAX_CHARS;
use domain::{Money, PageRequest, Sort, SortDir};
use platform::Redis;
use platform::config::CacheSettings;
use rand::Rng;
use repo::cache::{Keys, products as cache};
use repo::db::Page;
use repo::db::products::{self, ListQuery, ProductChanges, ProductRow};
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::jwt::Caller;
use crate::singleflight::SingleFlight;

pub const SORT_FIELDS: &[&str] = &["created_at", "updated_at", "title", "price", "stock"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: Uuid,
    pub title: String,
    pub description: String,
    pub price: Money,
    pub stock: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<ProductRow> for Product {
    fn from(row: ProductRow) -> Self {
        Self {
            id: row.id,
            title: row.title,
            description: row.description,
            price: Money::from_decimal(row.price),
            stock: row.stock,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// The cached form of a product (money as a string, like everywhere outside Rust).
#[derive(Serialize, Deserialize)]
struct CachedProduct {
    id: Uuid,
    title: String,
    description: String,
    price: String,
    stock: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl CachedProduct {
    fn from_product(p: &Product) -> Self {
        Self {
            id: p.id,
            title: p.title.clone(),
            description: p.description.clone(),
            price: p.price.to_string(),
            stock: p.stock,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }

    fn into_product(self) -> Option<Product> {
        Some(Product {
            id: self.id,
            title: self.title,
            description: self.description,
            price: Money::parse("price", &self.price).ok()?,
            stock: self.stock,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// Drops cached products after their rows changed. Called after the commit (deleting
/// before it would let a concurrent reader cache the old row again). A second delete a
/// moment later catches a reader that loaded the old row just before the commit and
/// stored it just after the first delete.
#[derive(Clone)]
pub struct ProductCache {
    redis: Redis,
    keys: Keys,
}

impl ProductCache {
    pub fn new(redis: Redis, keys: Keys) -> Self {
        Self { redis, keys }
    }

    pub async fn forget(&self, ids: &[Uuid]) {
        if ids.is_empty() {
            return;
        }
        if let Err(err) = cache::forget(&mut self.redis.clone(), &self.keys, ids).await {
            tracing::warn!(error = %err, "could not drop cached products; they expire by TTL");
        }
        let (mut redis, keys, ids) = (self.redis.clone(), self.keys.clone(), ids.to_vec());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = cache::forget(&mut redis, &keys, &ids).await;
        });
    }
}

#[derive(Clone)]
pub struct CatalogService {
    db: DatabaseConnection,
    redis: Redis,
    keys: Keys,
    cache: ProductCache,
    settings: CacheSettings,
    loads: Arc<SingleFlight<Uuid, Result<Option<Product>, String>>>,
}

impl CatalogService {
    pub fn new(db: DatabaseConnection, redis: Redis, keys: Keys, settings: CacheSettings) -> Self {
        let cache = ProductCache::new(redis.clone(), keys.clone());
        Self { db, redis, keys, cache, settings, loads: Arc::default() }
    }

    pub fn cache(&self) -> &ProductCache {
        &self.cache
    }

    pub async fn create(&self, caller: &Caller, new: NewProduct) -> Result<Product> {
        caller.require_admin()?;
        let row = products::insert(
            &self.db,
            products::NewProduct {
                id: Uuid::now_v7(),
                title: &new.title,
                description: &new.description,
                price: new.price.decimal(),
                stock: new.stock,
            },
        )
        .await?;
        // An id may have been asked for (and cached as missing) before it existed.
        self.cache.forget(&[row.id]).await;
        Ok(row.into())
    }

    pub async fn update(&self, caller: &Caller, id: Uuid, patch: ProductPatch) -> Result<Product> {
        caller.require_admin()?;
        if patch.is_empty() {
            return self.get(id).await;
        }
        let changes = ProductChanges {
            title: patch.title,
            description: patch.description,
            price: patch.price.map(Money::decimal),
            stock: patch.stock,
        };
        let row = products::update(&self.db, id, changes).await?.ok_or(Error::NotFound("product"))?;
        self.cache.forget(&[id]).await;
        Ok(row.into())
    }

    pub async fn delete(&self, caller: &Caller, id: Uuid) -> Result<()> {
        caller.require_admin()?;
        if !products::delete(&self.db, id).await? {
            return Err(Error::NotFound("product"));
        }
        self.cache.forget(&[id]).await;
        Ok(())
    }

    pub async fn list(&self, page: PageRequest, sort: Option<&str>, q: Option<&str>) -> Result<Page<Product>> {
        let sort = Sort::parse(sort, SORT_FIELDS, Sort { field: "created_at", dir: SortDir::Desc })?;
        if let Some(q) = q {
            domain::page::printable("q", q)?;
            if q.chars().count() > SEARCH_MAX_CHARS {
                return Err(domain::Invalid::new("q", format!("must be at most {SEARCH_MAX_CHARS} characters")).into());
            }
        }
        let q = q.map(str::trim).filter(|q| !q.is_empty());
        let rows = products::list(
            &self.db,
            ListQuery {
                offset: page.offset(),
                limit: page.page_size,
                sort: sort.field,
                descending: sort.dir == SortDir::Desc,
                title_contains: q,
            },
        )
        .await?;
        Ok(Page { items: rows.items.into_iter().map(Product::from).collect(), total: rows.total })
    }

    /// Cache-aside: Redis first; on a miss one loader per key reads Postgres and fills the
    /// cache with a jittered TTL (so entries written together do not expire together). An
    /// unknown id is remembered for a few seconds. If Redis is down, reads go to Postgres.
    pub async fn get(&self, id: Uuid) -> Result<Product> {
        match cache::get(&mut self.redis.clone(), &self.keys, id).await {
            Ok(cache::Cached::Hit(json)) => {
                if let Some(product) =
                    serde_json::from_str::<CachedProduct>(&json).ok().and_then(CachedProduct::into_product)
                {
                    metrics::counter!("product_cache_requests_total", "result" => "hit").increment(1);
                    return Ok(product);
                }
            }
            Ok(cache::Cached::KnownMissing) => {
                metrics::counter!("product_cache_requests_total", "result" => "negative_hit").increment(1);
                return Err(Error::NotFound("product"));
            }
            Ok(cache::Cached::Miss) => {}
            Err(err) => {
                metrics::counter!("product_cache_requests_total", "result" => "error").increment(1);
                tracing::warn!(error = %err, "product cache unavailable; reading Postgres");
                return products::find(&self.db, id).await?.map(Product::from).ok_or(Error::NotFound("product"));
            }
        }
        metrics::counter!("product_cache_requests_total", "result" => "miss").increment(1);
        let loaded = self.loads.run(id, || self.load(id)).await;
        loaded.map_err(|_| Error::unavailable("postgres"))?.ok_or(Error::NotFound("product"))
    }

    async fn load(&self, id: Uuid) -> Result<Option<Product>, String> {
        let product = products::find(&self.db, id).await.map_err(|e| e.to_string())?.map(Product::from);
        let mut redis = self.redis.clone();
        let stored = match &product {
            Some(product) => {
                let json = serde_json::to_string(&CachedProduct::from_product(product)).map_err(|e| e.to_string())?;
                let jitter = rand::thread_rng().gen_range(0..=self.settings.product_ttl_jitter_secs);
                cache::put(&mut redis, &self.keys, id, &json, self.settings.product_ttl_secs.get() + jitter).await
            }
            None => cache::put_missing(&mut redis, &self.keys, id, self.settings.negative_ttl_secs.get()).await,
        };
        if let Err(err) = stored {
            tracing::warn!(error = %err, "could not fill the product cache");
        }
        Ok(product)
    }
}
