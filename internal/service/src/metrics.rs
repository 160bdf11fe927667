//! Gauges sampled when `/metrics` is scraped. Counters and histograms are recorded where
//! things happen, with the `metrics` macros.

use crate::Services;

pub fn record_gauges(services: &Services) {
    let pool = services.deps.db.get_postgres_connection_pool();
    metrics::gauge!("db_pool_connections").set(pool.size() as f64);
    metrics::gauge!("db_pool_idle_connections").set(pool.num_idle() as f64);
    metrics::gauge!("db_pool_max_connections").set(f64::from(services.deps.settings.database.max_connections.get()));
}
