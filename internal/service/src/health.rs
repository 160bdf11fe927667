//! Readiness: can this process reach Postgres, Redis and RabbitMQ right now?

use std::time::Duration;

use platform::Redis;
use sea_orm::DatabaseConnection;

use crate::Deps;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One dependency's answer: `None` when it is fine, else what went wrong.
pub struct Check {
    pub service: &'static str,
    pub problem: Option<String>,
}

/// Checks the three services concurrently, each with a short timeout.
pub async fn readiness(deps: &Deps) -> Vec<Check> {
    let (postgres, redis, rabbitmq) = tokio::join!(
        check("postgres", ping_postgres(&deps.db)),
        check("redis", ping_redis(deps.redis.clone())),
        check("rabbitmq", async {
            let channel = deps.broker.channel().await.map_err(|e| e.to_string())?;
            let _ = channel.close(200, "readiness".into()).await;
            Ok(())
        }),
    );
    vec![postgres, redis, rabbitmq]
}

async fn check(service: &'static str, probe: impl Future<Output = Result<(), String>>) -> Check {
    let problem = match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => None,
        Ok(Err(err)) => Some(err),
        Err(_) => Some(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
    };
    Check { service, problem }
}

async fn ping_postgres(db: &DatabaseConnection) -> Result<(), String> {
    db.ping().await.map_err(|e| e.to_string())
}

async fn ping_redis(mut redis: Redis) -> Result<(), String> {
    redis::cmd("PING").query_async::<String>(&mut redis).await.map(|_| ()).map_err(|e| e.to_string())
}
