//! The store contract: one suite, run unchanged against both backends — SQLite (a fresh file) and
//! PostgreSQL (a fresh database on the cluster `.ci/postgres.sh` starts; skipped outside CI when
//! `TOKENGATE_TEST_PG_URL` is unset). Create, list, show, revoke, rotate (with and without grace), expiry,
//! scopes, certificate binding, events, usage increments (and batch ids), quota counts by period and the
//! quota feed, the change feed in commit order under concurrent writers, concurrent revoke/rotate,
//! migrations from several threads at once, and `store copy` in both directions.

mod common;

use common::pg::{admin_url, fresh_database, TestDb};
use std::sync::{Arc, Barrier};
use std::time::Duration;
use tokengate::config::Rate;
use tokengate::tokens::fields::Quota;
use tokengate::tokens::store::{
    unix_now, Location, NewToken, QuotaTotal, QuotaUse, Status, Store, StoreError, UsageBatch,
    UsageDelta,
};

/// A backend under test and what keeps it alive (a temporary folder or a database).
struct Backend {
    name: &'static str,
    location: Location,
    _keep: Keep,
}

enum Keep {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Db(#[allow(dead_code)] TestDb),
}

impl Backend {
    fn open(&self) -> Store {
        Store::open(&self.location).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }
}

fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    Backend {
        name: "sqlite",
        location: Location::Sqlite(dir.path().join("tokens.db")),
        _keep: Keep::Dir(dir),
    }
}

fn postgres() -> Option<Backend> {
    let db = fresh_database(&admin_url()?);
    Some(Backend {
        name: "postgres",
        location: Location::parse_target(db.url()).unwrap(),
        _keep: Keep::Db(db),
    })
}

/// Every backend available here: SQLite always, PostgreSQL when its test cluster is announced.
fn backends() -> Vec<Backend> {
    let mut all = vec![sqlite()];
    all.extend(postgres());
    all
}

fn new(user: &str) -> NewToken {
    NewToken {
        user: user.into(),
        label: "hive scale".into(),
        ..Default::default()
    }
}

#[test]
fn create_list_show_revoke_with_revisions_and_events() {
    for b in backends() {
        let mut s = b.open();
        let (a, ta) = s.create(&new("alice"), "cli").unwrap();
        let (bob, _) = s.create(&new("bob"), "cli").unwrap();
        let many = s.create_many(&[new("carol"), new("dave")], "seed").unwrap();
        assert_eq!(many.len(), 2, "{}", b.name);
        assert_eq!(s.list(Some("dave")).unwrap()[0].id, many[1].0);
        assert_eq!(s.list(None).unwrap().len(), 4);
        assert_eq!(s.list(Some("alice")).unwrap(), vec![a.clone()]);
        assert_eq!(s.get(a.id).unwrap(), a);
        let all = s.changes_since(0).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].digest, ta.digest());
        assert!(all.windows(2).all(|w| w[0].rev < w[1].rev), "{}", b.name);
        let last = all[3].rev;
        assert!(s.changes_since(last).unwrap().is_empty());
        assert_eq!(s.token_counts().unwrap(), (4, many[1].0));

        let (r, changed) = s.revoke(bob.id, "admin:1").unwrap();
        assert!(changed && r.status(unix_now()) == Status::Revoked);
        let (again, changed) = s.revoke(bob.id, "cli").unwrap();
        assert!(!changed && again.revoked_at == r.revoked_at, "{}", b.name);
        let ch = s.changes_since(last).unwrap();
        assert_eq!(ch.len(), 1, "a second revoke is no change ({})", b.name);
        assert!(ch[0].revoked && ch[0].rev > last);
        let ev: Vec<(String, String)> = s
            .events(bob.id)
            .unwrap()
            .into_iter()
            .map(|e| (e.event, e.actor))
            .collect();
        assert_eq!(
            ev,
            [
                ("created".to_string(), "cli".to_string()),
                ("revoked".to_string(), "admin:1".to_string())
            ],
            "{}",
            b.name
        );
        assert!(matches!(
            s.revoke(999, "cli"),
            Err(StoreError::NotFound { id: 999 })
        ));
        assert!(matches!(s.get(999), Err(StoreError::NotFound { id: 999 })));
    }
}

#[test]
fn fields_round_trip_scopes_expiry_and_binding() {
    for b in backends() {
        let mut s = b.open();
        let in_a_day = unix_now() + 86_400;
        let full = NewToken {
            user: "cam-net".into(),
            label: "entrance cam 2 — ünïcode".into(),
            scopes: vec!["telemetry:write".into(), "video:upload".into()],
            expires_at: Some(in_a_day),
            bound_cert: Some([7u8; 32]),
            rate_limit: Some(Rate::parse("5/s").unwrap()),
            quota: Some(Quota::parse("1000/month").unwrap()),
        };
        let (r, _) = s.create(&full, "cli").unwrap();
        assert_eq!(r.user, full.user, "{}", b.name);
        assert_eq!(r.label, full.label);
        assert_eq!(r.scopes, full.scopes);
        assert_eq!(r.expires_at, Some(in_a_day));
        assert_eq!(r.bound_cert, Some([7u8; 32]));
        assert_eq!(r.rate_limit, full.rate_limit);
        assert_eq!(r.quota, full.quota);
        assert_eq!((r.quota_used, r.quota_period), (0, None));
        assert_eq!(r.use_count, 0);
        assert_eq!(r.view(unix_now()).bound_cert_sha256, Some("07".repeat(32)));
        let row = s.changes_since(0).unwrap().pop().unwrap();
        assert_eq!(row.scopes, full.scopes);
        assert_eq!(row.expires_at, Some(in_a_day));
        assert_eq!(row.bound_cert, Some([7u8; 32]));
        assert_eq!((row.rate_limit, row.quota), (full.rate_limit, full.quota));
        let detail = s.events(r.id).unwrap()[0].detail.clone().unwrap();
        assert!(
            detail.contains("expires") && detail.contains("bound to certificate"),
            "{detail}"
        );
        // Expired: the status says so; the row stays until revoked.
        let (e, _) = s
            .create(
                &NewToken {
                    expires_at: Some(unix_now() - 1),
                    ..new("old")
                },
                "cli",
            )
            .unwrap();
        assert_eq!(e.status(unix_now()), Status::Expired);
    }
}

#[test]
fn rotate_keeps_identity_binding_and_grace() {
    for b in backends() {
        let mut s = b.open();
        let bound = NewToken {
            bound_cert: Some([1u8; 32]),
            ..new("alice")
        };
        let (a, old) = s.create(&bound, "cli").unwrap();
        let (r, fresh) = s
            .rotate(a.id, Some(Duration::from_secs(60)), "cli")
            .unwrap();
        assert_eq!(
            (r.id, &r.user, &r.label, r.bound_cert),
            (a.id, &a.user, &a.label, a.bound_cert)
        );
        assert!(r.rotated_at.is_some(), "{}", b.name);
        let row = s.changes_since(0).unwrap().pop().unwrap();
        assert_eq!(row.digest, fresh.digest());
        assert_eq!(row.prev_digest, Some(old.digest()));
        assert!(row.prev_valid_until.unwrap() >= unix_now() + 59);
        let (_, _) = s.rotate(a.id, None, "cli").unwrap();
        let row = s.changes_since(0).unwrap().pop().unwrap();
        assert_eq!(row.prev_digest, None, "{}", b.name);
        s.revoke(a.id, "cli").unwrap();
        let row = s.changes_since(0).unwrap().pop().unwrap();
        assert!(row.revoked && row.prev_digest.is_none());
        assert!(matches!(
            s.rotate(a.id, None, "cli"),
            Err(StoreError::Revoked { .. })
        ));
        let kinds: Vec<String> = s
            .events(a.id)
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(
            kinds,
            ["created", "rotated", "rotated", "revoked"],
            "{}",
            b.name
        );
    }
}

#[test]
fn usage_adds_up_moves_forward_and_never_touches_revisions() {
    for b in backends() {
        let mut s = b.open();
        let (a, _) = s.create(&new("alice"), "cli").unwrap();
        let rev = s.changes_since(0).unwrap()[0].rev;
        let delta = |uses, at| UsageDelta {
            id: a.id,
            uses,
            last_used_at: at,
            quota: None,
        };
        s.flush_usage(&UsageBatch::once(vec![delta(3, 100)]))
            .unwrap();
        s.flush_usage(&UsageBatch::once(vec![delta(2, 50), delta(1, 60)]))
            .unwrap();
        let r = s.get(a.id).unwrap();
        assert_eq!((r.use_count, r.last_used_at), (6, Some(100)), "{}", b.name);
        assert!(
            s.changes_since(rev).unwrap().is_empty(),
            "usage is not a change"
        );
        // Unknown ids are ignored.
        s.flush_usage(&UsageBatch::once(vec![UsageDelta {
            id: 999,
            uses: 1,
            last_used_at: 1,
            quota: None,
        }]))
        .unwrap();
    }
}

/// A batch from node `node` adding `count` to token `id`'s quota in the period [start, end).
fn quota_batch(node: &str, seq: u64, id: i64, (start, end): (i64, i64), count: u64) -> UsageBatch {
    UsageBatch {
        node: node.into(),
        seq,
        deltas: vec![UsageDelta {
            id,
            uses: count,
            last_used_at: start,
            quota: Some(QuotaUse { start, end, count }),
        }],
    }
}

#[test]
fn quota_flushes_reach_other_nodes_through_the_feed_in_commit_order() {
    const DAY: i64 = 86_400;
    let today = unix_now() / DAY * DAY;
    let day = (today, today + DAY);
    for b in backends() {
        let mut s = b.open();
        let n = b.name;
        let with_quota = |user| NewToken {
            quota: Some(Quota::parse("100/day").unwrap()),
            ..new(user)
        };
        let (a, _) = s.create(&with_quota("alice"), "cli").unwrap();
        let (c, _) = s.create(&with_quota("carol"), "cli").unwrap();
        let (_, _) = s.create(&new("dave"), "cli").unwrap();
        let start = s.quota_feed_head().unwrap();
        assert_eq!(start, 0, "{n}: a new store's feed is empty");
        let total = |id, total| QuotaTotal {
            id,
            period_start: today,
            total,
        };
        // Node A adds 60 to alice's, node B 5 to carol's and 2 to alice's.
        let totals = s.flush_usage(&quota_batch("A", 1, a.id, day, 60)).unwrap();
        assert_eq!(totals, [total(a.id, 60)], "{n}");
        s.flush_usage(&quota_batch("B", 1, c.id, day, 5)).unwrap();
        s.flush_usage(&quota_batch("B", 2, a.id, day, 2)).unwrap();
        assert_eq!(s.quota_feed_head().unwrap(), 3, "{n}");
        // Node B reads A's entry (its own are skipped, but passed).
        let seen = s.quota_changes_since(0, "B").unwrap();
        assert_eq!(
            (seen.position, seen.totals.clone(), seen.whole, seen.more),
            (3, vec![total(a.id, 60)], false, false),
            "{n}"
        );
        // Node C, a third, reads all three in order; from the head, nothing.
        let seen = s.quota_changes_since(0, "C").unwrap();
        assert_eq!(
            seen.totals,
            [total(a.id, 60), total(c.id, 5), total(a.id, 62)],
            "{n}"
        );
        assert!(s.quota_changes_since(3, "C").unwrap().totals.is_empty());
        // A reader that is behind gets a few entries at a time.
        for seq in 3..8 {
            s.flush_usage(&quota_batch("A", seq, c.id, day, 1)).unwrap();
        }
        let first = s.quota_changes_since(0, "C").unwrap();
        assert_eq!((first.position, first.more), (4, true), "{n}");
        assert_eq!(first.totals.last(), Some(&total(c.id, 6)), "{n}");
        let rest = s.quota_changes_since(first.position, "C").unwrap();
        assert_eq!((rest.position, rest.more), (8, false), "{n}");
        assert_eq!(
            rest.totals,
            (7..=10).map(|t| total(c.id, t)).collect::<Vec<_>>(),
            "{n}"
        );
        // A flush without quota counts appends nothing.
        s.flush_usage(&UsageBatch::once(vec![UsageDelta {
            id: a.id,
            uses: 1,
            last_used_at: 1,
            quota: None,
        }]))
        .unwrap();
        assert_eq!(s.quota_feed_head().unwrap(), 8, "{n}");
        // A reader ahead of the feed (the store was replaced) reads every count instead (of tokens with
        // a quota).
        let seen = s.quota_changes_since(99, "C").unwrap();
        assert!(seen.whole, "{n}");
        assert_eq!(seen.position, 8);
        let mut all = seen.totals;
        all.sort_by_key(|t| t.id);
        assert_eq!(all, [total(a.id, 62), total(c.id, 10)], "{n}");
    }
}

#[test]
fn quota_counts_add_within_the_period_start_over_after_it_and_come_too_late_before_it() {
    const DAY: i64 = 86_400;
    // Tuesday 1 December 2026 and the two days after; the month of December.
    let (d1, d2, d3) = (1_796_083_200, 1_796_083_200 + DAY, 1_796_083_200 + 2 * DAY);
    let december = (d1, 1_798_761_600);
    for b in backends() {
        let mut s = b.open();
        let n = b.name;
        let (a, _) = s.create(&new("alice"), "cli").unwrap();
        let used = |s: &mut Store| {
            let r = s.get(a.id).unwrap();
            (r.quota_period, r.quota_used)
        };
        s.flush_usage(&quota_batch("A", 1, a.id, (d2, d3), 10))
            .unwrap();
        assert_eq!(used(&mut s), (Some(d2), 10), "{n}");
        // Late counts of the day before: too late.
        s.flush_usage(&quota_batch("A", 2, a.id, (d1, d2), 4))
            .unwrap();
        assert_eq!(used(&mut s), (Some(d2), 10), "{n}: too late");
        // The quota became monthly: the day's 10 are the month's so far.
        s.flush_usage(&quota_batch("A", 3, a.id, december, 5))
            .unwrap();
        assert_eq!(used(&mut s), (Some(d1), 15), "{n}: day inside the month");
        // Two counts of one token in one batch (a replaced entry's beside the current one's) add up.
        let mut two = quota_batch("A", 4, a.id, december, 2);
        two.deltas
            .push(quota_batch("A", 4, a.id, december, 3).deltas[0]);
        s.flush_usage(&two).unwrap();
        assert_eq!(used(&mut s), (Some(d1), 20), "{n}");
        // Back to daily, on the third: the day starts over.
        s.flush_usage(&quota_batch("A", 5, a.id, (d3, d3 + DAY), 1))
            .unwrap();
        assert_eq!(used(&mut s), (Some(d3), 1), "{n}: a later period");
    }
}

#[test]
fn a_usage_batch_sent_twice_is_added_once_on_postgres() {
    let Some(b) = postgres() else { return };
    let mut s = b.open();
    let (a, _) = s.create(&new("alice"), "cli").unwrap();
    let batch = UsageBatch {
        node: "node-a".into(),
        seq: 7,
        deltas: vec![UsageDelta {
            id: a.id,
            uses: 5,
            last_used_at: 10,
            quota: None,
        }],
    };
    s.flush_usage(&batch).unwrap();
    s.flush_usage(&batch).unwrap(); // its answer was "lost": sent again
    let other = UsageBatch {
        seq: 8,
        ..batch.clone()
    };
    s.flush_usage(&other).unwrap();
    let by_other_node = UsageBatch {
        node: "node-b".into(),
        ..batch
    };
    s.flush_usage(&by_other_node).unwrap();
    assert_eq!(s.get(a.id).unwrap().use_count, 15);
}

#[test]
fn migrations_apply_once_from_many_threads_and_twice_is_harmless() {
    for b in backends() {
        let location = Arc::new(b.location.clone());
        let barrier = Arc::new(Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (location, barrier) = (location.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut s = Store::open(&location)?;
                    s.schema_version()
                })
            })
            .collect();
        for t in threads {
            let (v, known) = t
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("{}: {e}", b.name));
            assert_eq!(v, known, "{}", b.name);
        }
        let mut s = b.open();
        s.migrate().unwrap();
        let (v, known) = s.schema_version().unwrap();
        assert_eq!(v, known);
    }
}

#[test]
fn revisions_appear_in_commit_order_under_concurrent_writers() {
    for b in backends() {
        let location = b.location.clone();
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let location = location.clone();
                std::thread::spawn(move || {
                    let mut s = Store::open(&location).unwrap();
                    for i in 0..40 {
                        let (r, _) = s.create(&new(&format!("w{w}-{i}")), "cli").unwrap();
                        if i % 3 == 0 {
                            s.revoke(r.id, "cli").unwrap();
                        }
                    }
                })
            })
            .collect();
        // A reader following the feed while they write never sees a revision below one it saw.
        let mut reader = Store::open(&location).unwrap();
        let mut last = 0;
        let mut seen = 0;
        while writers.iter().any(|w| !w.is_finished()) {
            for row in reader.changes_since(last).unwrap() {
                assert!(row.rev > last, "{}: rev {} after {last}", b.name, row.rev);
                last = row.rev;
                seen += 1;
            }
        }
        for w in writers {
            w.join().unwrap();
        }
        for row in reader.changes_since(last).unwrap() {
            assert!(row.rev > last);
            last = row.rev;
            seen += 1;
        }
        let mut s = b.open();
        assert_eq!(s.token_counts().unwrap().0, 80, "{}", b.name);
        assert!(seen >= 80, "{}: the reader saw {seen} changes", b.name);
    }
}

#[test]
fn concurrent_revokes_and_rotations_leave_one_consistent_row_and_one_event_per_change() {
    for b in backends() {
        let mut s = b.open();
        let (a, _) = s.create(&new("alice"), "cli").unwrap();
        let barrier = Arc::new(Barrier::new(4));
        let outcomes: Vec<_> = (0..4)
            .map(|i| {
                let (location, barrier) = (b.location.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut s = Store::open(&location).unwrap();
                    barrier.wait();
                    let mut changed = 0;
                    for _ in 0..10 {
                        let r = if i % 2 == 0 {
                            s.revoke(a.id, "racer").map(|(_, c)| c)
                        } else {
                            s.rotate(a.id, None, "racer").map(|_| true)
                        };
                        match r {
                            Ok(true) => changed += 1,
                            Ok(false) | Err(StoreError::Revoked { .. }) => {}
                            Err(StoreError::Busy { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                    changed
                })
            })
            .collect();
        let changes: usize = outcomes.into_iter().map(|t| t.join().unwrap()).sum();
        let events = s.events(a.id).unwrap();
        assert_eq!(
            events.len(),
            1 + changes,
            "{}: one event per change",
            b.name
        );
        assert_eq!(
            events.iter().filter(|e| e.event == "revoked").count(),
            1,
            "{}: revoked exactly once",
            b.name
        );
        assert_eq!(
            events.last().unwrap().event,
            "revoked",
            "{}: nothing after the revoke",
            b.name
        );
        let row = s.changes_since(0).unwrap().pop().unwrap();
        assert!(row.revoked && row.prev_digest.is_none(), "{}", b.name);
    }
}

#[test]
fn store_copy_moves_everything_both_ways() {
    let Some(pg) = postgres() else {
        // Without a PostgreSQL server: SQLite to SQLite still goes through the same code.
        let (a, b) = (sqlite(), sqlite());
        copy_round_trip(&a, &b);
        return;
    };
    let (a, back) = (sqlite(), sqlite());
    copy_round_trip(&a, &pg);
    copy_round_trip(&pg, &back);
}

fn copy_round_trip(from: &Backend, to: &Backend) {
    let mut s = from.open();
    if s.token_counts().unwrap().0 == 0 {
        let (a, _) = s.create(&new("alice"), "cli").unwrap();
        s.create(
            &NewToken {
                bound_cert: Some([9; 32]),
                ..new("bob")
            },
            "cli",
        )
        .unwrap();
        s.rotate(a.id, Some(Duration::from_secs(600)), "cli")
            .unwrap();
        s.flush_usage(&UsageBatch::once(vec![UsageDelta {
            id: a.id,
            uses: 42,
            last_used_at: 77,
            quota: None,
        }]))
        .unwrap();
    }
    let data = s.export().unwrap();
    let mut t = to.open();
    t.import(&data, false).unwrap();
    assert_eq!(t.export().unwrap(), data, "{} → {}", from.name, to.name);
    assert!(matches!(
        t.import(&data, false),
        Err(StoreError::NotEmpty { .. })
    ));
    t.import(&data, true).unwrap();
    // The copy goes on where the original left off: new ids and revisions come after the copied ones.
    let max_id = data.tokens.iter().map(|t| t.record.id).max().unwrap();
    let max_rev = data.tokens.iter().map(|t| t.rev).max().unwrap();
    let (fresh, _) = t.create(&new("carol"), "cli").unwrap();
    assert!(
        fresh.id > max_id,
        "{}: id {} after {max_id}",
        to.name,
        fresh.id
    );
    let row = t.changes_since(max_rev).unwrap();
    assert_eq!(row.len(), 1, "{}", to.name);
    let a = &data.tokens[0];
    let got = t.get(a.record.id).unwrap();
    assert_eq!(
        (got.use_count, got.last_used_at),
        (a.record.use_count, a.record.last_used_at)
    );
}

/// Groups and licenses (issue 30), on both backends: the change feed carries a token's groups, their
/// roles and its licenses; every change gives the tokens it touches a new revision (and only those);
/// seats are counted in the transaction that takes one, also from many threads at once; every change is
/// an event with actor and detail; names and members that do not exist are refused.
#[test]
fn groups_and_licenses_reach_the_change_feed_and_seats_are_never_oversold() {
    use tokengate::tokens::store::{Access, Member};
    for b in backends() {
        let mut s = b.open();
        let (alice, _) = s.create(&new("alice"), "cli").unwrap();
        let (cam, _) = s.create(&new("alice"), "cli").unwrap();
        let (bob, _) = s.create(&new("bob"), "cli").unwrap();
        let access = |s: &mut Store, id: i64| -> (i64, Access) {
            let row = s
                .changes_since(0)
                .unwrap()
                .into_iter()
                .find(|r| r.id == id)
                .unwrap();
            (row.rev, row.access)
        };
        let (rev0, a0) = access(&mut s, alice.id);
        assert_eq!(a0, Access::default(), "{}", b.name);
        let (bob_rev0, _) = access(&mut s, bob.id);
        s.group_create("apiary-42", &["beekeeper".into()], "cli")
            .unwrap();
        assert!(matches!(
            s.group_create("apiary-42", &[], "cli"),
            Err(StoreError::Exists { .. })
        ));
        assert!(s
            .group_add("apiary-42", &Member::User("alice".into()), "admin:1")
            .unwrap());
        assert!(!s
            .group_add("apiary-42", &Member::User("alice".into()), "admin:1")
            .unwrap());
        assert!(matches!(
            s.group_add("apiary-42", &Member::Token(999_999), "cli"),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            s.group_add("nope", &Member::Token(bob.id), "cli"),
            Err(StoreError::NoGroup { .. })
        ));
        let (rev1, a1) = access(&mut s, alice.id);
        assert!(
            rev1 > rev0,
            "{}: the member's token got no new revision",
            b.name
        );
        assert_eq!(a1.groups, ["apiary-42"]);
        assert_eq!(a1.group_roles, ["beekeeper"]);
        assert_eq!(access(&mut s, cam.id).1.groups, ["apiary-42"], "{}", b.name);
        assert_eq!(
            access(&mut s, bob.id).0,
            bob_rev0,
            "{}: bob was touched",
            b.name
        );
        // Licenses: one seat, taken once; an end read with the row.
        s.license_create("video", 1, Some(4_000_000_000), "cli")
            .unwrap();
        assert!(s
            .license_assign("video", &Member::Token(cam.id), "cli")
            .unwrap());
        assert!(matches!(
            s.license_assign("video", &Member::User("bob".into()), "cli"),
            Err(StoreError::SeatsTaken { seats: 1, .. })
        ));
        assert_eq!(
            access(&mut s, cam.id).1.licenses,
            [("video".to_string(), Some(4_000_000_000))]
        );
        assert!(access(&mut s, alice.id).1.licenses.is_empty());
        let l = s.license("video").unwrap();
        assert_eq!((l.seats, l.seats_used, l.valid), (1, 1, true));
        // Removal and deletion touch the members' tokens again.
        s.group_remove("apiary-42", &Member::User("alice".into()), "cli")
            .unwrap();
        assert!(matches!(
            s.group_remove("apiary-42", &Member::User("alice".into()), "cli"),
            Err(StoreError::NotMember { .. })
        ));
        let (rev2, a2) = access(&mut s, alice.id);
        assert!(rev2 > rev1 && a2.groups.is_empty(), "{}", b.name);
        s.group_add("apiary-42", &Member::Token(bob.id), "cli")
            .unwrap();
        s.group_delete("apiary-42", "cli").unwrap();
        assert!(access(&mut s, bob.id).1.groups.is_empty(), "{}", b.name);
        let events: Vec<(String, String)> = s
            .access_events("group", "apiary-42")
            .unwrap()
            .into_iter()
            .map(|e| (e.event, e.actor))
            .collect();
        assert_eq!(
            events,
            [
                ("created".into(), "cli".into()),
                ("member_added".into(), "admin:1".into()),
                ("member_removed".into(), "cli".into()),
                ("member_added".into(), "cli".into()),
                ("deleted".into(), "cli".into()),
            ],
            "{}",
            b.name
        );
        // Many threads, each with its own connection, for 3 seats: exactly 3 get one.
        s.license_create("season", 3, None, "cli").unwrap();
        let barrier = Arc::new(Barrier::new(8));
        let won: usize = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (barrier, location) = (barrier.clone(), b.location.clone());
                    sc.spawn(move || {
                        let mut s = Store::open(&location).unwrap();
                        barrier.wait();
                        match s.license_assign("season", &Member::User(format!("u{i}")), "cli") {
                            Ok(true) => 1,
                            Err(StoreError::SeatsTaken { .. }) => 0,
                            other => panic!("{other:?}"),
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(won, 3, "{}", b.name);
        assert_eq!(s.license("season").unwrap().seats_used, 3, "{}", b.name);
    }
}

/// A forced `store copy` replaces the target's tokens: the target's groups and licenses go with them, so
/// a membership that named the target's token 1 never attaches to the copied token 1.
#[test]
fn a_forced_copy_leaves_no_group_or_seat_of_the_replaced_tokens() {
    use tokengate::tokens::store::Member;
    for target in backends() {
        let source = sqlite();
        let mut src = source.open();
        let (copied, _) = src.create(&new("mallory"), "cli").unwrap();
        let data = src.export().unwrap();
        let mut dst = target.open();
        let (old, _) = dst.create(&new("ops"), "cli").unwrap();
        assert_eq!(old.id, copied.id, "{}", target.name);
        dst.group_create("admins-team", &[], "cli").unwrap();
        dst.group_add("admins-team", &Member::Token(old.id), "cli")
            .unwrap();
        dst.license_create("video", 5, None, "cli").unwrap();
        dst.license_assign("video", &Member::Token(old.id), "cli")
            .unwrap();
        dst.import(&data, true).unwrap();
        let row = dst
            .changes_since(0)
            .unwrap()
            .into_iter()
            .find(|r| r.id == copied.id)
            .unwrap();
        assert_eq!(row.user, "mallory");
        assert!(row.access.is_empty(), "{}: {:?}", target.name, row.access);
        assert!(dst.groups().unwrap().is_empty(), "{}", target.name);
        assert!(dst.licenses().unwrap().is_empty(), "{}", target.name);
    }
}
