mod support;
use support::*;

#[tokio::test]
async fn harness_starts_bus_and_agent() {
    require_root();
    let bus = PrivateBus::start();
    let home = tempfile::tempdir().unwrap();
    let _agent = Agent::start(&bus, home.path(), "");
    let (ok, out, err) = busctl(
        &bus,
        &[
            "call",
            "org.vael.Antibody",
            "/org/vael/Antibody",
            "org.vael.Antibody",
            "Status",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("healthy"), "{out}");
}
