//! The lateral-movement chain: a container that read its token and then
//! dialled the API server is one `token-theft-chain` alert, once.

use tokenwatch_proto::v1::{alert::Evidence, Severity};

use super::{
    pod::{describe, token, KubePod},
    stage, support,
};

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn token_read_then_connect_is_one_chain() {
    let _serial = support::serialise();
    let stage = stage::shared();
    let (agent, api) = (&stage.agent, &stage.api);
    let mut pod = KubePod::start();
    pod.watched_by(agent);
    pod.actor.must(&format!("open {}", token()));
    pod.actor.must(&format!("connect {}", api.v4));
    // A second dial is an alert of its own but no second chain.
    pod.actor.must(&format!("connect {}", api.v4));
    let seen = pod.observe(agent);
    let alerts = pod.alerts(&seen.alerts);
    let rules: Vec<&str> = alerts.iter().map(|a| a.rule.as_str()).collect();
    assert_eq!(
        rules,
        ["token-read", "apiserver-connect", "token-theft-chain", "apiserver-connect"],
        "{}\nlog:\n{}",
        describe(&alerts),
        seen.stderr
    );
    for alert in &alerts {
        pod.assert_placed(alert);
    }
    let chain = alerts[2];
    assert_eq!(chain.severity, i32::from(Severity::High), "{chain:?}");
    assert_eq!(chain.related_alert_ids, [alerts[0].id.clone(), alerts[1].id.clone()], "the read and the dial");
    assert!(matches!(chain.evidence, Some(Evidence::ApiServerConnect(_))), "{chain:?}");
    assert!(chain.summary.contains("read its token, then dialled the API server"), "{}", chain.summary);
}
