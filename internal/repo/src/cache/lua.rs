//! The Lua scripts, each known by its name, so that every call gets a CLIENT span
//! `EVALSHA <script>` (`db.system.name = redis`) without its keys or arguments, which hold
//! user ids and idempotency keys.
//!
//! `Lua` and `Call` mirror `redis::Script` and `redis::ScriptInvocation` (`key`, `arg`,
//! `invoke_async`), so a script is declared with its name and called as before.

use platform::Redis;
use redis::{FromRedisValue, RedisResult, Script, ScriptInvocation, ToRedisArgs};
use tracing::Instrument;

pub struct Lua {
    name: &'static str,
    script: Script,
}

impl Lua {
    pub fn new(name: &'static str, source: &str) -> Self {
        Self { name, script: Script::new(source) }
    }

    pub fn key<T: ToRedisArgs>(&self, key: T) -> Call<'_> {
        Call { name: self.name, invocation: self.script.key(key) }
    }
}

/// One call of a script, its keys and arguments being added.
pub struct Call<'a> {
    name: &'static str,
    invocation: ScriptInvocation<'a>,
}

impl Call<'_> {
    pub fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        self.invocation.key(key);
        self
    }

    pub fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.invocation.arg(arg);
        self
    }

    /// Runs the script (by SHA, sending it first if Redis does not know it) in its span.
    pub async fn invoke_async<T: FromRedisValue>(&self, redis: &mut Redis) -> RedisResult<T> {
        let span = tracing::info_span!(
            "redis",
            otel.name = format!("EVALSHA {}", self.name),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system.name = "redis",
            db.operation.name = "EVALSHA",
            db.stored_procedure.name = self.name,
        );
        let result = self.invocation.invoke_async(redis).instrument(span.clone()).await;
        if let Err(err) = &result {
            span.record("otel.status_code", "error");
            span.in_scope(|| tracing::debug!(error = %err, "script failed"));
        }
        result
    }
}
