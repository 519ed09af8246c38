//! The PostgreSQL backend's own behaviour against a real server (what SQLite has no counterpart for; the
//! shared operations are in `tests/store_contract.rs`): notifications, a server that is down, stopped or
//! kills the connection, lock waits, TLS modes, and passwords that never show in an error.
//! Needs `eval "$(.ci/postgres.sh start --tls)"`; skipped without it outside CI.

mod common;

use common::pg::{
    admin_url, fresh_database, non_loopback_ip, password_of, server_addr, with_database, with_host,
    with_option, CutProxy, TestDb,
};
use std::thread;
use std::time::{Duration, Instant};
use tokengate::tokens::store::pg::{Listener, PgStore};
use tokengate::tokens::store::{NewToken, PgUrl, StoreError, TokenStore, UsageBatch, UsageDelta};

fn new(user: &str) -> NewToken {
    NewToken {
        user: user.into(),
        label: "hive scale".into(),
        ..Default::default()
    }
}

/// `create` as the store interface does it: one token, its record and plaintext.
fn create(
    s: &mut PgStore,
    new: &NewToken,
    actor: &str,
) -> Result<
    (
        tokengate::tokens::store::TokenRecord,
        tokengate::tokens::format::Token,
    ),
    StoreError,
> {
    let (id, token) = s
        .create_many(std::slice::from_ref(new), actor)?
        .pop()
        .expect("one");
    Ok((s.get(id)?, token))
}

/// A migrated store on a fresh database (None: no test cluster, skipped).
fn store() -> Option<(TestDb, PgStore)> {
    let db = fresh_database(&admin_url()?);
    let s = PgStore::open(&db).expect("open");
    Some((db, s))
}

#[test]
fn listener_wakes_on_changes_only() {
    let Some((_db, mut s)) = store() else { return };
    let mut l = s.listen().unwrap();
    let t0 = Instant::now();
    assert!(!l.wait(Duration::from_millis(200)).unwrap());
    assert!(t0.elapsed() >= Duration::from_millis(200));
    let (a, _) = create(&mut s, &new("alice"), "cli").unwrap();
    assert!(l.wait(Duration::from_secs(5)).unwrap());
    // A burst of changes is one wake-up.
    for _ in 0..5 {
        s.rotate(a.id, None, "cli").unwrap();
    }
    thread::sleep(Duration::from_millis(100));
    assert!(l.wait(Duration::from_secs(5)).unwrap());
    assert!(!l.wait(Duration::from_millis(100)).unwrap());
    // What changes nothing notifies nobody: usage, a second revoke, a refused rotation.
    s.revoke(a.id, "cli").unwrap();
    assert!(l.wait(Duration::from_secs(5)).unwrap());
    s.revoke(a.id, "cli").unwrap();
    assert!(s.rotate(a.id, None, "cli").is_err());
    s.flush_usage(&UsageBatch::once(vec![UsageDelta {
        id: a.id,
        uses: 1,
        last_used_at: 1,
        quota: None,
    }]))
    .unwrap();
    assert!(!l.wait(Duration::from_millis(300)).unwrap());
}

fn assert_hides_password(e: &StoreError, url: &str) {
    let pw = password_of(url);
    let (shown, debug) = (e.to_string(), format!("{e:?}"));
    assert!(
        !pw.is_empty() && !shown.contains(&pw) && !debug.contains(&pw),
        "{shown} / {debug}"
    );
}

#[test]
fn a_server_that_is_down_is_a_clean_error() {
    let Some(admin) = admin_url() else { return };
    // Nothing listens on port 1: what a stopped server looks like to a client.
    let down = admin.replacen(
        &admin[admin.rfind('@').unwrap()..admin.rfind('/').unwrap()],
        "@127.0.0.1:1",
        1,
    );
    for e in [
        PgStore::open(&down).unwrap_err(),
        PgStore::connect(&down).unwrap_err(),
    ] {
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("database postgres://tokengate:***@127.0.0.1:1/"),
            "{e}"
        );
        assert_hides_password(&e, &down);
    }
    let e = Listener::connect(&PgUrl::parse(&down).unwrap()).unwrap_err();
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
    // A wrong password is refused the same way, and shows neither password.
    let pw = password_of(&admin);
    let wrong = admin.replacen(&format!(":{pw}@"), ":wrong-secret-123@", 1);
    let e = PgStore::connect(&wrong).unwrap_err();
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
    assert!(
        e.to_string().contains("password authentication failed"),
        "{e}"
    );
    assert_hides_password(&e, &wrong);
    assert_hides_password(&e, &admin);
}

#[test]
fn a_connection_killed_under_the_store_is_a_clean_error() {
    let Some(admin) = admin_url() else { return };
    let db = fresh_database(&admin);
    let url = with_option(&db, "application_name=victim");
    let mut s = PgStore::open(&url).unwrap();
    let mut l = s.listen().unwrap();
    create(&mut s, &new("alice"), "cli").unwrap();
    assert!(l.wait(Duration::from_secs(5)).unwrap());
    let killed: i64 = db
        .client()
        .query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = 'victim' AND datname = current_database()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(killed, 2);
    thread::sleep(Duration::from_millis(200));
    let e = s.get(1).unwrap_err();
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
    assert_hides_password(&e, &url);
    let t0 = Instant::now();
    let e = l.wait(Duration::from_secs(10)).unwrap_err();
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
    assert!(
        t0.elapsed() < Duration::from_secs(6),
        "noticed without sleeping out the timeout"
    );
    assert_hides_password(&e, &url);
    // A fresh connection works again.
    assert_eq!(PgStore::connect(&url).unwrap().list(None).unwrap().len(), 1);
}

/// A cluster of its own (the CI script in another directory), stopped under an open store and listener.
#[test]
fn a_server_stopped_under_the_store_is_a_clean_error() {
    if admin_url().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tg-stopped-{}", std::process::id()));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/postgres.sh");
    let run = |command: &str| {
        let out = std::process::Command::new("bash")
            .args([script, command])
            .env("TOKENGATE_PG_DIR", &dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let exports = run("start");
    let url = exports
        .lines()
        .find_map(|l| l.strip_prefix("export TOKENGATE_TEST_PG_URL="))
        .unwrap()
        .to_string();
    let mut s = PgStore::open(&url).unwrap();
    let (a, _) = create(&mut s, &new("alice"), "cli").unwrap();
    let mut l = s.listen().unwrap();
    run("stop");
    let usage = UsageBatch::once(vec![UsageDelta {
        id: a.id,
        uses: 1,
        last_used_at: 1,
        quota: None,
    }]);
    let errors = [
        s.get(a.id).unwrap_err(),
        s.flush_usage(&usage).unwrap_err(),
        s.revoke(a.id, "cli").unwrap_err(),
        l.wait(Duration::from_secs(5)).unwrap_err(),
        PgStore::connect(&url).unwrap_err(),
    ];
    for e in errors {
        eprintln!("stopped server: {e}");
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
        assert_hides_password(&e, &url);
    }
}

/// A writer that waits longer than BUSY_TIMEOUT for another's lock gives up with `Busy`.
#[test]
fn a_long_lock_wait_is_busy() {
    let Some((db, mut s)) = store() else { return };
    let (a, _) = create(&mut s, &new("alice"), "cli").unwrap();
    let mut raw = db.client();
    let mut tx = raw.transaction().unwrap();
    tx.execute("SELECT 1 FROM tokens WHERE id = $1 FOR UPDATE", &[&a.id])
        .unwrap();
    let t0 = Instant::now();
    let e = s.revoke(a.id, "cli").unwrap_err();
    assert!(matches!(e, StoreError::Busy { .. }), "{e}");
    assert!(t0.elapsed() >= Duration::from_secs(4));
    tx.rollback().unwrap();
    assert!(
        s.revoke(a.id, "cli").unwrap().1,
        "the connection is still usable"
    );
}

/// `TOKENGATE_TEST_PG_CA` is set by `.ci/postgres.sh start --tls`.
fn tls_db() -> Option<(TestDb, String)> {
    let admin = admin_url()?;
    let Ok(ca) = std::env::var("TOKENGATE_TEST_PG_CA") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the cluster with --tls"
        );
        eprintln!("skipped: TOKENGATE_TEST_PG_CA is not set (.ci/postgres.sh start --tls)");
        return None;
    };
    let db = fresh_database(&admin);
    PgStore::open(&db).unwrap();
    Some((db, ca))
}

/// Whether the connection named `app` uses TLS, as the server sees it.
fn uses_tls(db: &TestDb, app: &str) -> bool {
    db.client()
        .query_one(
            "SELECT ssl FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE application_name = $1",
            &[&app],
        )
        .unwrap()
        .get(0)
}

#[test]
fn tls_modes() {
    let Some((db, ca)) = tls_db() else { return };
    let cases = [
        ("require", "sslmode=require".to_string(), true),
        (
            "verify_full",
            format!("sslmode=verify-full&sslrootcert={ca}"),
            true,
        ),
        (
            "verify_ca",
            format!("sslmode=verify-ca&sslrootcert={ca}"),
            true,
        ),
        (
            "require_root",
            format!("sslmode=require&sslrootcert={ca}"),
            true,
        ),
        ("prefer", "sslmode=prefer".to_string(), true),
        // SCRAM bound to the TLS channel (SCRAM-SHA-256-PLUS): a man in the middle cannot log in.
        (
            "binding",
            "sslmode=require&channel_binding=require".to_string(),
            true,
        ),
        ("disable", "sslmode=disable".to_string(), false),
    ];
    for (app, options, tls) in cases {
        let url = with_option(
            &with_option(&db, &options),
            &format!("application_name={app}"),
        );
        let mut s = PgStore::connect(&url).unwrap_or_else(|e| panic!("{options}: {e}"));
        create(&mut s, &new("alice"), "tls").unwrap();
        assert_eq!(uses_tls(&db, app), tls, "{options}");
        // The listener goes over the same TLS set-up.
        let mut l = s.listen().unwrap();
        create(&mut s, &new("bob"), "tls").unwrap();
        assert!(l.wait(Duration::from_secs(5)).unwrap());
    }
}

#[test]
fn tls_checks_what_it_is_asked_to() {
    let Some((db, ca)) = tls_db() else { return };
    // The certificate names 127.0.0.1 and localhost; reach the same server under another name.
    let port = db
        .url()
        .rsplit_once(':')
        .unwrap()
        .1
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let renamed = |options: &str| {
        let url = db.url().replacen(
            &format!("127.0.0.1:{port}"),
            &format!("tokengate.invalid:{port}"),
            1,
        );
        with_option(&url, &format!("hostaddr=127.0.0.1&{options}"))
    };
    PgStore::connect(&renamed(&format!("sslmode=verify-ca&sslrootcert={ca}"))).unwrap();
    PgStore::connect(&renamed("sslmode=require")).unwrap();
    let refused = [
        renamed(&format!("sslmode=verify-full&sslrootcert={ca}")),
        // The test CA is in no system store.
        with_option(&db, "sslmode=verify-full"),
        with_option(&db, "sslmode=verify-ca&sslrootcert=system"),
    ];
    for url in refused {
        let e = PgStore::connect(&url).unwrap_err();
        assert!(matches!(e, StoreError::Unavailable { .. }), "{url}: {e}");
        assert_hides_password(&e, &url);
    }
    // The system's roots only: refused with the way to fix it.
    let e = PgStore::connect(&with_option(&db, "sslmode=verify-full")).unwrap_err();
    assert!(e.to_string().contains("sslrootcert=PATH"), "{e}");
    let e = PgStore::connect(&with_option(
        &db,
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    ))
    .unwrap_err();
    assert!(
        matches!(e, StoreError::BadUrl { .. }) && e.to_string().contains("/nonexistent/ca.pem"),
        "{e}"
    );
}

/// Without `sslmode`, a server on another host must present a certificate that verifies: the test server
/// is reached through a proxy on a non-loopback address of this machine (`hostaddr`), under the name its
/// certificate carries (`localhost`).
#[test]
fn without_sslmode_a_remote_store_must_present_a_verified_certificate() {
    let Some((db, ca)) = tls_db() else { return };
    let Some(ip) = non_loopback_ip() else {
        eprintln!("skipped: this machine has no address but loopback");
        return;
    };
    let proxy = CutProxy::start_on(ip, server_addr(&db));
    let remote = |options: &str| {
        let url = with_host(&db, &format!("localhost:{}", proxy.addr.port()));
        with_option(&url, &format!("hostaddr={ip}{options}"))
    };
    // With the CA that signed it: TLS, verified.
    let mut s = PgStore::connect(&remote(&format!(
        "&sslrootcert={ca}&application_name=remote_ca"
    )))
    .unwrap_or_else(|e| panic!("{e}"));
    create(&mut s, &new("alice"), "tls").unwrap();
    assert!(uses_tls(&db, "remote_ca"));
    // Without: the system's roots do not know the test CA. Refused, saying how to fix it, no password.
    let e = PgStore::connect(&remote("")).unwrap_err();
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
    assert!(
        e.to_string().contains("certificate") && e.to_string().contains("sslrootcert=PATH"),
        "{e}"
    );
    assert_hides_password(&e, &db);
    // libpq's `require`, written out, still connects without a check; check-config warns about it.
    PgStore::connect(&remote("&sslmode=require")).unwrap();
    let warning = PgUrl::parse(&remote("&sslmode=require"))
        .unwrap()
        .transport_warning()
        .expect("a warning");
    assert!(
        warning.contains(&format!("localhost:{}", proxy.addr.port())),
        "{warning}"
    );
    assert!(PgUrl::parse(&remote(""))
        .unwrap()
        .transport_warning()
        .is_none());
    // The key=value form says the same, quoted password and all.
    let dbname = db.url().rsplit('/').next().unwrap().to_string();
    let words = |options: &str| {
        format!(
            "host=localhost hostaddr={ip} port={} user=tokengate password='{}' dbname={dbname} \
             application_name=remote_words {options}",
            proxy.addr.port(),
            password_of(&db)
        )
    };
    let _open =
        PgStore::connect(&words(&format!("sslrootcert='{ca}'"))).unwrap_or_else(|e| panic!("{e}"));
    assert!(uses_tls(&db, "remote_words"));
    let e = PgStore::connect(&words("")).unwrap_err();
    assert!(e.to_string().contains("sslrootcert=PATH"), "{e}");
    assert_hides_password(&e, &db);
}

#[test]
fn test_urls_are_rewritten() {
    assert_eq!(
        with_database("postgres://u:p@h:1/db?sslmode=require", "x"),
        "postgres://u:p@h:1/x?sslmode=require"
    );
    assert_eq!(
        with_database("postgres://u:p@h:1", "x"),
        "postgres://u:p@h:1/x"
    );
    assert_eq!(password_of("postgres://u:p4@h:1/db"), "p4");
}
