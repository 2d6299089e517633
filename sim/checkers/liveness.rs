//! Property: liveness — once faults stop, a leader exists and a write succeeds within a bound.

use crate::cluster::{agreed_leader, client_of_all};
use std::time::Duration;
use warren::proto::v1 as pb;

pub async fn check(managers: Vec<u64>, bound: Duration) {
    let start = tokio::time::Instant::now();
    agreed_leader(managers.clone(), bound).await;
    let client = client_of_all(managers);
    loop {
        let spec = pb::ServiceSpec {
            name: "liveness-probe".into(),
            image: "busybox".into(),
            replicas: 1,
            ..Default::default()
        };
        let call = client.call(|mut s| {
            let spec = spec.clone();
            async move {
                s.services
                    .create_service(pb::CreateServiceRequest { spec: Some(spec) })
                    .await
            }
        });
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) if e.code() == tonic::Code::AlreadyExists => return,
            _ => {}
        }
        assert!(
            start.elapsed() < bound,
            "liveness: no write succeeded within {bound:?} after the faults stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
