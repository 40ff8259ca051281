//! The one way noded talks to many nodes at once: every push, renewal
//! step, verify gathering and ping goes through [`fan_out`].

use std::future::Future;

use crate::core::Result;

/// Nodes worked on at once.
pub const CONCURRENCY: usize = 32;

/// Runs `op` on every item of `targets`, at most `concurrency` at once, and
/// returns each item with its result, in the order given. `on_done` is
/// called once per finished item (a progress bar steps on it). A task that
/// panics or is cancelled is logged and left out: its item has no result.
pub async fn fan_out<N, T, F, Fut>(
    targets: &[N],
    concurrency: usize,
    on_done: &(dyn Fn() + Sync),
    op: F,
) -> Vec<(N, Result<T>)>
where
    N: Clone + Send + 'static,
    T: Send + 'static,
    F: Fn(N) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    // Each item's future is made only when it may start: a push's payload
    // (an ssconf set, a config) is cloned `concurrency` times, not once
    // per node.
    let limit = concurrency.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    let mut out = Vec::with_capacity(targets.len());
    let mut joined_one = |joined: Option<std::result::Result<_, tokio::task::JoinError>>| {
        on_done();
        match joined {
            Some(Ok(r)) => out.push(r),
            Some(Err(e)) => tracing::error!("fan-out task failed: {e}"),
            None => {}
        }
    };
    for (i, target) in targets.iter().cloned().enumerate() {
        if tasks.len() >= limit {
            joined_one(tasks.join_next().await);
        }
        let fut = op(target.clone());
        tasks.spawn(async move { (i, target, fut.await) });
    }
    while let Some(joined) = tasks.join_next().await {
        joined_one(Some(joined));
    }
    out.sort_by_key(|(i, _, _)| *i);
    out.into_iter().map(|(_, n, r)| (n, r)).collect()
}

/// No progress to show.
pub fn quiet() {}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::core::Error;

    #[tokio::test]
    async fn results_keep_the_order_given_and_the_bound_holds() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let done = AtomicUsize::new(0);
        let targets: Vec<u64> = (0..20).collect();
        let out = fan_out(
            &targets,
            3,
            &|| {
                done.fetch_add(1, Ordering::Relaxed);
            },
            |n| {
                let (running, peak) = (running.clone(), peak.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    // Later items finish first.
                    tokio::time::sleep(Duration::from_millis(20 - n)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    if n % 5 == 0 {
                        Err(Error::Invalid(format!("item {n}")))
                    } else {
                        Ok(n * 2)
                    }
                }
            },
        )
        .await;
        assert_eq!(done.load(Ordering::Relaxed), 20);
        assert!(peak.load(Ordering::SeqCst) <= 3);
        let order: Vec<u64> = out.iter().map(|(n, _)| *n).collect();
        assert_eq!(order, targets);
        for (n, r) in out {
            match r {
                Ok(v) => assert_eq!(v, n * 2),
                Err(e) => assert_eq!(e.to_string(), format!("item {n}")),
            }
        }
    }
}
