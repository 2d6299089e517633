//! Property: liveness — once faults stop, a leader exists and a write succeeds within a bound.

use crate::cluster::{agreed_leader, client_of_all, create_service};
use std::time::Duration;

pub async fn check(managers: Vec<u64>, bound: Duration) {
    let start = tokio::time::Instant::now();
    agreed_leader(managers.clone(), bound).await;
    let client = client_of_all(managers);
    loop {
        match create_service(&client, "liveness-probe", 1, Duration::from_secs(2)).await {
            Some(Ok(_)) => return,
            Some(Err(e)) if e.code() == tonic::Code::AlreadyExists => return,
            _ => {}
        }
        assert!(
            start.elapsed() < bound,
            "liveness: no write succeeded within {bound:?} after the faults stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
