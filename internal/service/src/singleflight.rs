//! One loader per key per process: when a hot cache entry expires, the hundred requests
//! that miss it at once share a single database read instead of stampeding Postgres.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::OnceCell;

pub struct SingleFlight<K, V> {
    in_flight: Mutex<HashMap<K, Weak<OnceCell<V>>>>,
}

impl<K: Hash + Eq + Clone, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self { in_flight: Mutex::new(HashMap::new()) }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    /// Runs `load` unless a load for `key` is already running, in which case it waits for
    /// that one and returns its value. If the running load is cancelled, a waiter takes over.
    pub async fn run<F, Fut>(&self, key: K, load: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = {
            // A std mutex: the critical section is a map lookup, never held across an await.
            let mut in_flight = self.in_flight.lock().expect("single-flight map poisoned");
            match in_flight.get(&key).and_then(Weak::upgrade) {
                Some(cell) => cell,
                None => {
                    let cell = Arc::new(OnceCell::new());
                    in_flight.insert(key.clone(), Arc::downgrade(&cell));
                    cell
                }
            }
        };
        let value = cell.get_or_init(load).await.clone();
        let mut in_flight = self.in_flight.lock().expect("single-flight map poisoned");
        if in_flight.get(&key).is_some_and(|weak| weak.ptr_eq(&Arc::downgrade(&cell))) {
            in_flight.remove(&key);
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_for_one_key_share_one_load() {
        let flight = Arc::new(SingleFlight::<u32, u32>::default());
        let loads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (flight, loads) = (flight.clone(), loads.clone());
            tasks.push(tokio::spawn(async move {
                flight
                    .run(7, || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        42
                    })
                    .await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), 42);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_later_call_loads_again() {
        let flight = SingleFlight::<u32, u32>::default();
        assert_eq!(flight.run(1, || async { 1 }).await, 1);
        assert_eq!(flight.run(1, || async { 2 }).await, 2);
    }
}
