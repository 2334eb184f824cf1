//! Redis scripts whose guarantee is a race too narrow to hit end to end, run on their own
//! against a real Redis.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rmb_testkit::redis::RedisServer;

const INBOX_DROP: &str = include_str!("../src/backplane/redis/lua/inbox_drop.lua");

/// A dead pod's taker reads its inbox empty, then deletes it. An entry appended in between
/// (a sender still routing to that pod) must survive for the next round.
#[test]
fn a_drained_inbox_is_deleted_only_while_it_is_still_empty() {
    let redis = RedisServer::start();
    let inbox = "rmb:{p:gone}:inbox";
    redis.cli(&[
        "XADD",
        inbox,
        "1-1",
        "k",
        "7",
        "e",
        "late",
        "x",
        "9999999999",
    ]);
    let kept = redis.cli(&["EVAL", INBOX_DROP, "1", inbox]).unwrap();
    assert_eq!(kept.trim(), "0");
    assert_eq!(
        redis.cli(&["XLEN", inbox]).unwrap().trim(),
        "1",
        "the late entry survives"
    );
    redis.cli(&["XDEL", inbox, "1-1"]);
    let dropped = redis.cli(&["EVAL", INBOX_DROP, "1", inbox]).unwrap();
    assert_eq!(dropped.trim(), "1");
    assert_eq!(redis.cli(&["EXISTS", inbox]).unwrap().trim(), "0");
    // Already gone counts as dropped.
    let again = redis.cli(&["EVAL", INBOX_DROP, "1", inbox]).unwrap();
    assert_eq!(again.trim(), "1");
}
