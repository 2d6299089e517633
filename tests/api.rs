#![cfg(not(madsim))]
//! The gRPC API's status codes for bad input, through the client library against a real
//! manager process.

mod common;

use common::*;
use tonic::Code;
use warren::client::Client;
use warren::proto::v1 as pb;

fn spec(name: &str, replicas: i64) -> pb::ServiceSpec {
    pb::ServiceSpec {
        name: name.into(),
        image: "busybox".into(),
        replicas,
        ..Default::default()
    }
}

async fn create(c: &Client, spec: pb::ServiceSpec) -> Result<pb::Service, warren::client::ClientError> {
    c.create_service(spec).await
}

#[tokio::test]
async fn status_codes_for_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let m = ManagerProc::start(&tmp.path().join("m1"));
    let c = admin_client(std::slice::from_ref(&m.api));
    let web = create(&c, spec("web", 1)).await.unwrap();

    for (spec, code) in [
        (spec("UPPER", 1), Code::InvalidArgument),
        (spec("a_b", 1), Code::InvalidArgument),
        (spec(&"a".repeat(64), 1), Code::InvalidArgument),
        (spec("", 1), Code::InvalidArgument),
        (spec("api", -1), Code::InvalidArgument),
        (spec("api", 100_001), Code::InvalidArgument),
        (spec("web", 1), Code::AlreadyExists),
    ] {
        let name = spec.name.clone();
        assert_eq!(
            create(&c, spec).await.unwrap_err().code(),
            code,
            "create {name:?}"
        );
    }
    let scale = |service: &str, replicas: i64, expected_version: u64| {
        let service = service.to_string();
        let c = &c;
        async move {
            c.call(|mut s| {
                let service = service.clone();
                async move {
                    s.services
                        .scale_service(pb::ScaleServiceRequest {
                            service,
                            replicas,
                            expected_version,
                        })
                        .await
                }
            })
            .await
        }
    };
    assert_eq!(scale("nope", 1, 0).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        scale("web", -1, 0).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        scale("web", 2, web.version + 100).await.unwrap_err().code(),
        Code::Aborted,
        "stale version"
    );
    let get = c
        .call(|mut s| async move {
            s.services
                .get_service(pb::GetServiceRequest {
                    service: "nope".into(),
                    consistent: true,
                })
                .await
        })
        .await;
    assert_eq!(get.unwrap_err().code(), Code::NotFound);
    let del = c
        .call(|mut s| async move {
            s.services
                .delete_service(pb::DeleteServiceRequest {
                    service: "nope".into(),
                })
                .await
        })
        .await;
    assert_eq!(del.unwrap_err().code(), Code::NotFound);

    // Nothing changed: web is as created, alone.
    let list = c
        .call(|mut s| async move {
            s.services
                .list_services(pb::ListServicesRequest {
                    consistent: true,
                    ..Default::default()
                })
                .await
        })
        .await
        .unwrap();
    assert_eq!(list.services, vec![web.clone()]);
    // A version-checked scale with the right version goes through.
    assert_eq!(
        scale("web", 4, web.version).await.unwrap().spec.unwrap().replicas,
        4
    );

    let dead = admin_client(&[format!("127.0.0.1:{}", free_port())]);
    let err = create(&dead, spec("x", 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(Client::new::<&str>(&[], warren::security::Transport::bootstrap()).is_err());
}
