//! The front end in a real headless Chromium, against an in-process server.
//!
//! Chromium is driven over the Chrome DevTools Protocol with the WebSocket
//! client the server already depends on (`tungstenite`): a few dozen lines
//! instead of a browser-automation framework. Each user gets its own
//! browser context (separate cookies and storage, like two profiles).
//!
//! Without Chromium the test is skipped with a loud message, unless
//! `JWTCHAT_REQUIRE_BROWSER=1` (as in CI), where it fails.
//! `JWTCHAT_UPDATE_SCREENSHOT=1` rewrites `docs/screenshot.png`.

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use support::*;
use tungstenite::{Message, WebSocket};

#[test]
fn two_people_chat_in_a_real_browser() {
    let Some(browser) = Browser::launch() else {
        return;
    };
    let server = start();
    let url = format!("http://{}/", server.addr);
    let mut cdp = browser.connect();

    let a = cdp.new_page(&url, (1100, 680));
    let b = cdp.new_page(&url, (390, 760)); // a phone-width screen
    cdp.log_in(&a, "userA", "passwordA");
    cdp.log_in(&b, "userB", "passwordB");

    // Each sees the other online: A through B's `join`, B through `welcome`.
    cdp.wait_for(&a, "online('userA') && online('userB')");
    cdp.wait_for(&b, "online('userA') && online('userB')");
    cdp.wait_for(&a, "[...document.querySelectorAll('#messages .system')].some(e => e.textContent.includes('userB'))");

    // Messages typed in either page appear in both, in the same order.
    cdp.send_chat(&a, "hello from A");
    cdp.wait_for(&b, "texts().length === 1");
    cdp.send_chat(&b, "hi A, B here");
    let expected = json!(["hello from A", "hi A, B here"]);
    for page in [&a, &b] {
        cdp.wait_for(page, "texts().length === 2");
        assert_eq!(cdp.eval(page, "texts()"), expected);
        assert_eq!(cdp.eval(page, "seqs()"), json!([1, 2]));
    }
    assert_eq!(
        cdp.eval(
            &a,
            "[...document.querySelectorAll('#messages .message.own .text')].map(e => e.textContent)"
        ),
        json!(["hello from A"]),
        "own messages are marked"
    );

    // Markup arrives as literal text and runs nothing.
    let attack = "<img src=x onerror=alert(1)>";
    cdp.send_chat(&b, attack);
    for page in [&a, &b] {
        cdp.wait_for(page, "texts().length === 3");
        assert_eq!(cdp.eval(page, "texts()[2]"), json!(attack));
        assert_eq!(
            cdp.eval(page, "document.querySelectorAll('#messages img').length"),
            json!(0)
        );
        assert_eq!(cdp.eval(page, "window.__alerted === true"), json!(false));
    }

    cdp.screenshot(&a);

    // A wrong password shows an error and opens no socket.
    let c = cdp.new_page(&url, (800, 600));
    cdp.type_into(&c, "#username", "userC");
    cdp.type_into(&c, "#password", "wrong");
    cdp.press_enter(&c);
    cdp.wait_for(
        &c,
        "document.querySelector('#login-error').textContent.trim().length > 0",
    );
    assert_eq!(cdp.eval(&c, "window.jwtchat.socketsOpened"), json!(0));
    assert_eq!(
        cdp.eval(&c, "document.querySelector('#chat').hidden"),
        json!(true)
    );

    cdp.assert_no_page_errors();
}

#[test]
fn an_expired_session_sends_the_user_back_to_log_in() {
    let Some(browser) = Browser::launch() else {
        return;
    };
    // The page would renew its token while in use; a session cap as short
    // as the token means renewal cannot take it past the first expiry.
    let server = start_with(|c| {
        c.token_ttl_secs = 3;
        c.max_session_secs = 3;
    });
    let mut cdp = browser.connect();
    let page = cdp.new_page(&format!("http://{}/", server.addr), (800, 600));
    // Record the close code the page's socket sees.
    cdp.eval(
        &page,
        "window.__closes = []; const Orig = window.WebSocket; window.WebSocket = class extends Orig { \
           constructor(...a) { super(...a); this.addEventListener('close', e => window.__closes.push(e.code)); } }; true",
    );
    cdp.log_in(&page, "userA", "passwordA");
    cdp.wait_for(&page, "window.jwtchat.state === 'expired'");
    assert_eq!(cdp.eval(&page, "window.__closes"), json!([4001]));
    assert_eq!(
        cdp.eval(
            &page,
            "document.querySelector('#login-form').offsetParent !== null"
        ),
        json!(true)
    );
    let message = cdp.eval(&page, "document.querySelector('#login-error').textContent");
    assert!(
        message
            .as_str()
            .is_some_and(|m| m.to_lowercase().contains("session expired")),
        "expired state says so: {message}"
    );
    cdp.assert_no_page_errors();
}

#[test]
fn an_active_page_renews_its_token_and_stays_connected() {
    let Some(browser) = Browser::launch() else {
        return;
    };
    // Three-second tokens: without renewal the page would be closed with
    // 4001 within three seconds.
    let server = start_with(|c| c.token_ttl_secs = 3);
    let mut cdp = browser.connect();
    let page = cdp.new_page(&format!("http://{}/", server.addr), (800, 600));
    cdp.log_in(&page, "userA", "passwordA");
    let first_expiry = cdp
        .eval(&page, "window.jwtchat.expiresAt")
        .as_f64()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(8));
    assert_eq!(cdp.eval(&page, "window.jwtchat.state"), json!("connected"));
    assert_eq!(
        cdp.eval(&page, "window.jwtchat.socketsOpened"),
        json!(1),
        "renewed in place, never reconnected"
    );
    let expiry = cdp
        .eval(&page, "window.jwtchat.expiresAt")
        .as_f64()
        .unwrap();
    assert!(
        expiry >= first_expiry + 5.0,
        "expiry moved from {first_expiry} to {expiry}"
    );
    let refreshes = server.metric("jwtchat_token_refreshes_total");
    assert!(refreshes >= 2, "refreshed {refreshes} times");
    cdp.send_chat(&page, "still here");
    cdp.wait_for(&page, "texts().includes('still here')");
    cdp.assert_no_page_errors();
}

#[test]
fn a_server_restarted_with_a_new_secret_sends_the_page_to_log_in() {
    let Some(browser) = Browser::launch() else {
        return;
    };
    // The real binary without JWTCHAT_SECRET: each run makes up a secret.
    let (first, addr) = jwtchat_binary("127.0.0.1:0");
    let mut cdp = browser.connect();
    let page = cdp.new_page(&format!("http://{addr}/"), (800, 600));
    cdp.log_in(&page, "userA", "passwordA");

    // Restarted on the same port: the page's token, good for 15 more
    // minutes, is refused by the new secret.
    drop(first);
    let (_second, _) = jwtchat_binary(&addr.to_string());
    cdp.wait_for(
        &page,
        "document.querySelector('#login-form').offsetParent !== null",
    );
    assert_eq!(
        cdp.eval(&page, "document.querySelector('#login-error').textContent"),
        json!("The server was restarted — please log in again.")
    );
    assert_eq!(
        cdp.eval(&page, "sessionStorage.length"),
        json!(0),
        "the dead token is forgotten"
    );
    // Logging in again works against the new server.
    cdp.type_into(&page, "#password", "passwordA");
    cdp.press_enter(&page);
    cdp.wait_for(&page, "window.jwtchat.state === 'connected'");
    cdp.assert_no_page_errors();
}

#[test]
fn a_refused_message_stays_in_the_composer() {
    let Some(browser) = Browser::launch() else {
        return;
    };
    // One message, then the rate refuses the next.
    let server = start_with(|c| {
        c.message_rate = 1;
        c.message_burst = 1;
    });
    let mut cdp = browser.connect();
    let page = cdp.new_page(&format!("http://{}/", server.addr), (800, 600));
    cdp.log_in(&page, "userA", "passwordA");
    cdp.send_chat(&page, "first");
    cdp.wait_for(&page, "texts().length === 1");

    cdp.type_into(&page, "#message-input", "second, refused");
    cdp.wait_for(&page, "!document.querySelector('#send-button').disabled");
    cdp.press_enter(&page);
    cdp.wait_for(&page, "!document.querySelector('#notice').hidden");
    let notice = cdp.eval(&page, "document.querySelector('#notice').textContent");
    assert!(
        notice.as_str().is_some_and(|n| n.starts_with("Not sent:")),
        "{notice}"
    );
    assert_eq!(
        cdp.eval(&page, "document.querySelector('#message-input').value"),
        json!("second, refused"),
        "the text is kept"
    );
    assert_eq!(cdp.eval(&page, "texts()"), json!(["first"]));

    // Sent again once the rate allows: taken, and only now cleared.
    std::thread::sleep(Duration::from_millis(1100));
    cdp.wait_for(&page, "!document.querySelector('#send-button').disabled");
    cdp.press_enter(&page);
    cdp.wait_for(&page, "texts().length === 2");
    cdp.wait_for(
        &page,
        "document.querySelector('#message-input').value === ''",
    );
    cdp.assert_no_page_errors();
}

#[test]
fn the_counter_follows_the_servers_limit() {
    let Some(browser) = Browser::launch() else {
        return;
    };
    let server = start_with(|c| c.max_message_bytes = 10);
    let mut cdp = browser.connect();
    let page = cdp.new_page(&format!("http://{}/", server.addr), (800, 600));
    cdp.log_in(&page, "userA", "passwordA");
    let counter = "document.querySelector('#counter')";
    assert_eq!(
        cdp.eval(&page, &format!("{counter}.hidden")),
        json!(true),
        "far from the limit: no counter"
    );
    cdp.type_into(&page, "#message-input", "1234567");
    assert_eq!(cdp.eval(&page, &format!("{counter}.hidden")), json!(true));
    cdp.type_into(&page, "#message-input", "8");
    assert_eq!(
        cdp.eval(
            &page,
            &format!("{counter}.hidden ? 'hidden' : {counter}.textContent")
        ),
        json!("8 / 10")
    );
    cdp.type_into(&page, "#message-input", "901");
    assert_eq!(
        cdp.eval(&page, &format!("{counter}.textContent")),
        json!("11 / 10")
    );
    assert_eq!(
        cdp.eval(&page, &format!("{counter}.classList.contains('over')")),
        json!(true)
    );
    assert_eq!(
        cdp.eval(&page, "document.querySelector('#send-button').disabled"),
        json!(true),
        "over the server's limit: cannot send"
    );
    cdp.assert_no_page_errors();
}

#[test]
fn a_reload_keeps_the_session() {
    let Some(browser) = Browser::launch() else {
        return;
    };
    let server = start_with(|c| c.history = 10);
    let mut cdp = browser.connect();
    let page = cdp.new_page(&format!("http://{}/", server.addr), (800, 600));
    cdp.log_in(&page, "userB", "passwordB");
    cdp.send_chat(&page, "before the reload");
    cdp.wait_for(&page, "texts().length === 1");

    cdp.reload(&page);
    cdp.wait_for(&page, "window.jwtchat.state === 'connected'");
    assert_eq!(
        cdp.eval(&page, "document.querySelector('#login').hidden"),
        json!(true),
        "no login form"
    );
    assert_eq!(
        cdp.eval(&page, "document.querySelector('#me').textContent"),
        json!("userB")
    );
    cdp.wait_for(&page, "texts().includes('before the reload')");
    assert_eq!(
        cdp.eval(&page, "[localStorage.length, sessionStorage.length]"),
        json!([0, 1]),
        "sessionStorage only"
    );
    // Logging out ends it for good: a reload then shows the login form.
    cdp.eval(
        &page,
        "document.querySelector('#logout-button').click(); true",
    );
    cdp.reload(&page);
    assert_eq!(cdp.eval(&page, "window.jwtchat.state"), json!("login"));
    assert_eq!(cdp.eval(&page, "sessionStorage.length"), json!(0));
    cdp.assert_no_page_errors();
}

#[test]
fn a_hidden_tab_counts_unread_messages_in_its_title() {
    let Some(browser) = Browser::launch() else {
        return;
    };
    let server = start();
    let url = format!("http://{}/", server.addr);
    let mut cdp = browser.connect();
    let a = cdp.new_page(&url, (800, 600));
    let b = cdp.new_page(&url, (800, 600));
    cdp.log_in(&a, "userA", "passwordA");
    cdp.log_in(&b, "userB", "passwordB");
    assert_eq!(cdp.eval(&a, "document.title"), json!("jwtchat — userA"));

    // Headless Chromium keeps every page visible, and freezing a page
    // stops its script: so the page is told it is hidden the way a browser
    // tells it, document.hidden plus a visibilitychange event.
    set_hidden(&mut cdp, &a, true);
    cdp.send_chat(&b, "one");
    cdp.send_chat(&b, "two");
    cdp.wait_for(&a, "texts().length === 2");
    assert_eq!(cdp.eval(&a, "document.title"), json!("(2) jwtchat — userA"));
    // Its own messages (another tab of the same user) are not unread.
    set_hidden(&mut cdp, &a, false);
    assert_eq!(cdp.eval(&a, "document.title"), json!("jwtchat — userA"));
    cdp.assert_no_page_errors();
}

#[test]
fn links_can_be_clicked_and_cannot_run_script() {
    let Some(browser) = Browser::launch() else {
        return;
    };
    let server = start();
    let url = format!("http://{}/", server.addr);
    let mut cdp = browser.connect();
    let a = cdp.new_page(&url, (800, 600));
    let b = cdp.new_page(&url, (800, 600));
    cdp.log_in(&a, "userA", "passwordA");
    cdp.log_in(&b, "userB", "passwordB");
    let text = "see https://example.com/a?b=1&c=2. or javascript:alert(1) \
                or http://x.test/\"><img src=x onerror=alert(1)>";
    cdp.send_chat(&b, text);
    cdp.wait_for(&a, "texts().length === 1");
    assert_eq!(
        cdp.eval(&a, "texts()[0]"),
        json!(text),
        "the text is intact"
    );
    let links = cdp.eval(
        &a,
        "[...document.querySelectorAll('#messages .text a')].map(l => \
           [l.getAttribute('href'), l.rel, l.target, l.textContent])",
    );
    assert_eq!(
        links,
        json!([
            [
                "https://example.com/a?b=1&c=2",
                "noopener noreferrer",
                "_blank",
                "https://example.com/a?b=1&c=2"
            ],
            [
                "http://x.test/%22%3E%3Cimg",
                "noopener noreferrer",
                "_blank",
                "http://x.test/\"><img"
            ]
        ])
    );
    assert_eq!(
        cdp.eval(&a, "document.querySelectorAll('#messages img').length"),
        json!(0)
    );
    // Following the javascript: text does nothing either: it is no link.
    cdp.eval(
        &a,
        "document.querySelectorAll('#messages .text a').forEach(l => l.target = '_self'); \
         [...document.querySelectorAll('#messages .text a')].some(l => l.protocol === 'javascript:')",
    );
    assert_eq!(cdp.eval(&a, "window.__alerted === true"), json!(false));
    cdp.assert_no_page_errors();
}

#[test]
fn a_phone_sized_page_stays_tidy() {
    let Some(browser) = Browser::launch() else {
        return;
    };
    let server = start();
    let url = format!("http://{}/", server.addr);
    let mut cdp = browser.connect();
    let a = cdp.new_page(&url, (390, 844));
    let b = cdp.new_page(&url, (800, 600));
    cdp.log_in(&a, "userA", "passwordA");
    cdp.log_in(&b, "userB", "passwordB");

    let empty = "document.querySelector('#empty')";
    assert_eq!(
        cdp.eval(&a, &format!("!{empty}.hidden && {empty}.textContent")),
        json!("No messages yet — say hello!")
    );

    // The header is one row: every item on the same line.
    let rows = cdp.eval(
        &a,
        "new Set([...document.querySelectorAll('.topbar > *')].filter(e => e.offsetParent) \
           .map(e => Math.round(e.getBoundingClientRect().top + e.getBoundingClientRect().height / 2))).size",
    );
    assert!(rows.as_u64().is_some_and(|n| n <= 2), "centres: {rows}");
    let height = cdp.eval(
        &a,
        "document.querySelector('.topbar').getBoundingClientRect().height",
    );
    assert!(
        height.as_f64().is_some_and(|h| h < 56.0),
        "header height {height}"
    );
    let width = cdp.eval(&a, "document.documentElement.scrollWidth");
    assert_eq!(width, json!(390), "nothing sticks out sideways");

    for i in 0..25 {
        cdp.send_chat(&b, &format!("message {i} from B"));
    }
    cdp.send_chat(&a, "mine");
    cdp.wait_for(&a, "texts().length === 26");
    assert_eq!(cdp.eval(&a, &format!("{empty}.hidden")), json!(true));
    // Own bubbles don't repeat my name; others' avatars tell users apart.
    assert_eq!(
        cdp.eval(
            &a,
            "document.querySelectorAll('#messages .own .from').length"
        ),
        json!(0)
    );
    assert_eq!(
        cdp.eval(
            &a,
            "[...document.querySelectorAll('#online .avatar')].map(e => e.dataset.initial)"
        ),
        json!(["UA", "UB"])
    );
    let hues = cdp.eval(
        &a,
        "new Set([...document.querySelectorAll('#online .avatar')].map(e => e.className)).size",
    );
    assert_eq!(hues, json!(2), "two users, two colours");

    // At the bottom before the keyboard opens (the view gets shorter):
    // still at the bottom after.
    let at_bottom = "(m => m.scrollHeight - m.scrollTop - m.clientHeight < 2)(document.querySelector('#messages'))";
    cdp.wait_for(&a, at_bottom);
    cdp.set_viewport(&a, (390, 500));
    cdp.wait_for(&a, "innerHeight === 500");
    cdp.wait_for(&a, at_bottom);
    cdp.set_viewport(&a, (390, 844));
    cdp.save_png(&a, "phone-screenshot.png");
    cdp.assert_no_page_errors();
}

#[test]
fn message_times_say_the_day_when_it_is_not_today() {
    let Some(browser) = Browser::launch() else {
        return;
    };
    let server = start();
    let mut cdp = browser.connect();
    let page = cdp.new_page(&format!("http://{}/", server.addr), (800, 600));
    // Local times, so the answer does not depend on the machine's zone.
    let cases = [
        ("new Date(2026, 10, 30, 14, 2)", "14:02"),
        ("new Date(2026, 10, 29, 14, 2)", "Yesterday 14:02"),
        ("new Date(2026, 10, 28, 9, 5)", "28 Nov 09:05"),
        ("new Date(2025, 11, 31, 23, 59)", "31 Dec 2025 23:59"),
        // Just after midnight, yesterday evening is yesterday.
        ("new Date(2026, 0, 31, 23, 0)", "Yesterday 23:00"),
    ];
    for (date, want) in cases {
        let now = if want == "Yesterday 23:00" {
            "new Date(2026, 1, 1, 0, 10)"
        } else {
            "new Date(2026, 10, 30, 18, 0)"
        };
        assert_eq!(
            cdp.eval(
                &page,
                &format!("window.jwtchat.formatTime({date}.getTime(), {now}.getTime())")
            ),
            json!(want),
            "{date}"
        );
    }
    assert_eq!(
        cdp.eval(
            &page,
            "['userA', 'ada_lovelace', 'bob', 'Émile Zola', 'x'].map(window.jwtchat.initials)"
        ),
        json!(["UA", "AL", "Bo", "ÉZ", "X"])
    );
    cdp.assert_no_page_errors();
}

#[test]
fn a_presence_frame_updates_the_list_with_one_summary_line() {
    let Some(browser) = Browser::launch() else {
        return;
    };
    let server = start();
    let mut cdp = browser.connect();
    let page = cdp.new_page(&format!("http://{}/", server.addr), (800, 600));
    track_sockets(&mut cdp, &page);
    cdp.log_in(&page, "userA", "passwordA");
    cdp.wait_for(&page, "online('userA')");

    // Today's single-change frames keep their line each.
    inject(&mut cdp, &page, json!({"type": "join", "user": "carol"}));
    assert_eq!(online_names(&mut cdp, &page), json!(["carol", "userA"]));
    assert_eq!(system_lines(&mut cdp, &page), json!(["carol joined"]));

    // One window, several changes: `left` applies after `joined`.
    inject(
        &mut cdp,
        &page,
        json!({"type": "presence", "room": "general",
               "joined": ["dave", "erin", "frank"], "left": ["carol"]}),
    );
    assert_eq!(
        online_names(&mut cdp, &page),
        json!(["dave", "erin", "frank", "userA"])
    );
    assert_eq!(online_count(&mut cdp, &page), json!(["4", 4]));
    assert_eq!(
        system_lines(&mut cdp, &page),
        json!(["carol joined", "3 people joined, 1 left"]),
        "one line for the frame, not one per name"
    );

    // A name in both lists came and went; one name reads like `leave`.
    inject(
        &mut cdp,
        &page,
        json!({"type": "presence", "room": "general", "joined": ["gina"], "left": ["gina"]}),
    );
    inject(
        &mut cdp,
        &page,
        json!({"type": "presence", "room": "general", "joined": [], "left": ["dave"]}),
    );
    assert_eq!(
        online_names(&mut cdp, &page),
        json!(["erin", "frank", "userA"])
    );
    assert_eq!(online_count(&mut cdp, &page), json!(["3", 3]));
    assert_eq!(
        system_lines(&mut cdp, &page),
        json!([
            "carol joined",
            "3 people joined, 1 left",
            "1 person joined, 1 left",
            "dave left"
        ])
    );
    cdp.assert_no_page_errors();
}

#[test]
fn a_truncated_online_list_shows_the_true_count() {
    let Some(browser) = Browser::launch() else {
        return;
    };
    let server = start();
    let mut cdp = browser.connect();
    let page = cdp.new_page(&format!("http://{}/", server.addr), (800, 600));
    track_sockets(&mut cdp, &page);
    cdp.log_in(&page, "userA", "passwordA");
    cdp.wait_for(&page, "online('userA')");

    // A welcome from a server whose --presence-list-max cut the list.
    let expires_at = cdp.eval(&page, "window.jwtchat.expiresAt");
    inject(
        &mut cdp,
        &page,
        json!({"type": "welcome", "user": "userA", "expires_at": expires_at,
               "online": ["userA", "userB"], "online_count": 1500,
               "online_truncated": true, "history": []}),
    );
    assert_eq!(online_count(&mut cdp, &page), json!(["1500", 1500]));
    assert_eq!(online_names(&mut cdp, &page), json!(["userA", "userB"]));
    assert_eq!(more_note(&mut cdp, &page), json!("and 1498 more"));

    // Two names the partial list did not know: both count.
    inject(
        &mut cdp,
        &page,
        json!({"type": "presence", "room": "general", "joined": ["yann", "zoe"], "left": []}),
    );
    assert_eq!(online_count(&mut cdp, &page), json!(["1502", 1502]));
    assert_eq!(more_note(&mut cdp, &page), json!("and 1498 more"));
    assert_eq!(system_lines(&mut cdp, &page), json!(["2 people joined"]));

    // A known name joining again does not count twice; an unknown one
    // leaving (one of the 1498) still does.
    inject(
        &mut cdp,
        &page,
        json!({"type": "presence", "room": "general", "joined": ["userB"], "left": ["someone"]}),
    );
    assert_eq!(online_count(&mut cdp, &page), json!(["1501", 1501]));
    assert_eq!(more_note(&mut cdp, &page), json!("and 1497 more"));
    inject(&mut cdp, &page, json!({"type": "leave", "user": "zoe"}));
    assert_eq!(online_count(&mut cdp, &page), json!(["1500", 1500]));
    assert_eq!(more_note(&mut cdp, &page), json!("and 1497 more"));
    cdp.assert_no_page_errors();
}

#[test]
fn rooms_unread_counts_and_direct_messages_in_a_real_browser() {
    let Some(browser) = Browser::launch() else {
        return;
    };
    // "ops" is open to everyone; the demo users' tokens also allow
    // "random" and any "team-*" room.
    let server = start_with(|c| c.open_rooms = vec!["ops".into()]);
    let url = format!("http://{}/", server.addr);
    let mut cdp = browser.connect();
    let a = cdp.new_page(&url, (1100, 680));
    let b = cdp.new_page(&url, (390, 760)); // phone width: the list is a strip
    cdp.log_in(&a, "userA", "passwordA");
    cdp.log_in(&b, "userB", "passwordB");

    // Both start in general, with the rooms they may join listed, to be
    // joined when opened.
    for page in [&a, &b] {
        assert_eq!(cdp.eval(page, "window.jwtchat.room"), json!("general"));
        assert_eq!(
            cdp.eval(page, ROOM_LIST),
            json!(["general", "ops", "random"])
        );
        assert_eq!(cdp.eval(page, DM_LIST), json!([]));
        assert_eq!(cdp.eval(page, &joined("ops")), json!(false));
    }
    cdp.wait_for(&a, "online('userA') && online('userB')");

    // B opens ops, then goes back up to general with Alt+ArrowUp: ops stays
    // open, counting what B does not see.
    cdp.click(&b, &room_button("ops"));
    cdp.wait_for(&b, &joined("ops"));
    cdp.wait_for(&b, "location.hash === '#room=ops'");
    cdp.press_alt_arrow(&b, "ArrowUp");
    cdp.wait_for(
        &b,
        "window.jwtchat.room === 'general' && location.hash === ''",
    );

    // A writes in ops while B looks at general: a badge of 1 on ops.
    cdp.click(&a, &room_button("ops"));
    cdp.wait_for(
        &a,
        "window.jwtchat.room === 'ops' && location.hash === '#room=ops'",
    );
    let markup = "<img src=x onerror=alert(1)> <b>only</b> in ops";
    cdp.send_chat(&a, markup);
    cdp.wait_for(&a, "texts().length === 1");
    cdp.wait_for(&b, &format!("{} === '1'", badge("ops")));
    assert_eq!(cdp.eval(&b, &badge("general")), json!(""));
    assert_eq!(
        cdp.eval(&b, "texts()"),
        json!([]),
        "general shows none of it"
    );

    // B opens ops: the badge clears, and the message reads as text.
    cdp.click(&b, &room_button("ops"));
    cdp.wait_for(&b, "window.jwtchat.room === 'ops'");
    assert_eq!(cdp.eval(&b, &badge("ops")), json!(""));
    cdp.wait_for(&b, "texts().length === 1");
    assert_eq!(cdp.eval(&b, "texts()"), json!([markup]));
    assert_eq!(
        cdp.eval(
            &b,
            "document.querySelectorAll('#messages img, #messages b').length"
        ),
        json!(0)
    );
    cdp.wait_for(&b, "online('userA') && online('userB')");

    // A goes back to general, where A clicks userB in the online list:
    // their DM opens, listed as userB.
    cdp.press_alt_arrow(&a, "ArrowUp");
    cdp.wait_for(&a, "window.jwtchat.room === 'general'");
    assert_eq!(cdp.eval(&a, "texts()"), json!([]));
    let dm = "dm:userA:userB";
    cdp.click(&a, "#online li[data-user='userB'] button");
    cdp.wait_for(
        &a,
        &format!("window.jwtchat.room === '{dm}' && location.hash === '#room=dm%3AuserA%3AuserB'"),
    );
    assert_eq!(cdp.eval(&a, DM_LIST), json!(["userB"]));
    cdp.wait_for(&a, &joined(dm));
    cdp.send_chat(&a, "psst, B");
    cdp.wait_for(&a, "texts().length === 1");

    // B, in ops, finds it under DMs with a badge, and reads it.
    cdp.wait_for(&b, &format!("{} === '1'", badge(dm)));
    assert_eq!(cdp.eval(&b, DM_LIST), json!(["userA"]));
    assert_eq!(cdp.eval(&b, "texts()"), json!([markup]), "still in ops");
    cdp.click(&b, &room_button(dm));
    cdp.wait_for(&b, &format!("window.jwtchat.room === '{dm}'"));
    cdp.wait_for(&b, "texts().length === 1");
    assert_eq!(cdp.eval(&b, "texts()"), json!(["psst, B"]));
    assert_eq!(cdp.eval(&b, &badge(dm)), json!(""));
    cdp.send_chat(&b, "hi A");
    cdp.wait_for(&a, "texts().length === 2");
    assert_eq!(cdp.eval(&a, "texts()"), json!(["psst, B", "hi A"]));

    // A reload in ops comes back to ops (the hash), with its history, and
    // keeps the DM.
    cdp.click(&b, &room_button("ops"));
    cdp.wait_for(&b, "location.hash === '#room=ops'");
    cdp.reload(&b);
    cdp.wait_for(&b, "window.jwtchat.state === 'connected'");
    cdp.wait_for(&b, "window.jwtchat.room === 'ops'");
    cdp.wait_for(&b, "texts().length === 1");
    assert_eq!(cdp.eval(&b, "texts()"), json!([markup]));
    assert_eq!(cdp.eval(&b, "location.hash"), json!("#room=ops"));
    cdp.wait_for(&b, &joined(dm));
    assert_eq!(cdp.eval(&b, DM_LIST), json!(["userA"]));

    // Alt+ArrowDown: the next room, where B is alone.
    cdp.press_alt_arrow(&b, "ArrowDown");
    cdp.wait_for(
        &b,
        "window.jwtchat.room === 'random' && location.hash === '#room=random'",
    );
    cdp.wait_for(&b, &joined("random"));
    assert_eq!(online_names(&mut cdp, &b), json!(["userB"]));

    // The claim's "team-*": the name box takes only names that fit it.
    let join = "document.querySelector('#join-button')";
    assert_eq!(
        cdp.eval(&b, "document.querySelector('#join-room').hidden"),
        json!(false)
    );
    cdp.eval(&b, "document.querySelector('#join-room').open = true; true");
    let rule = "Use a–z, 0–9, - and _ (at most 32), starting with a letter or digit.";
    let not_yours = "You may join only names starting with team-.";
    for (bad, why) in [
        ("Team-Red", rule),
        ("team-red!", rule),
        ("ops-red", not_yours),
    ] {
        cdp.eval(&b, "document.querySelector('#join-input').value = ''; true");
        cdp.type_into(&b, "#join-input", bad);
        assert_eq!(
            cdp.eval(
                &b,
                &format!(
                    "[{join}.disabled, document.querySelector('#join-input').ariaInvalid, \
                      document.querySelector('#join-hint').textContent]"
                )
            ),
            json!([true, "true", why]),
            "{bad}"
        );
    }
    cdp.eval(&b, "document.querySelector('#join-input').value = ''; true");
    cdp.type_into(&b, "#join-input", "team-red");
    assert_eq!(cdp.eval(&b, &format!("{join}.disabled")), json!(false));
    cdp.press_enter(&b);
    cdp.wait_for(
        &b,
        "window.jwtchat.room === 'team-red' && location.hash === '#room=team-red'",
    );
    cdp.wait_for(&b, &joined("team-red"));
    assert_eq!(
        cdp.eval(&b, ROOM_LIST),
        json!(["general", "ops", "random", "team-red"])
    );

    // The hash is untrusted: markup there is no room, and changes nothing.
    cdp.eval(
        &b,
        "location.hash = '#room=' + encodeURIComponent('<img src=x onerror=alert(1)>'); true",
    );
    cdp.wait_for(&b, "location.hash === '#room=team-red'");
    assert_eq!(cdp.eval(&b, "window.jwtchat.room"), json!("team-red"));
    for page in [&a, &b] {
        assert_eq!(
            cdp.eval(page, "document.querySelectorAll('img').length"),
            json!(0)
        );
        assert_eq!(cdp.eval(page, "window.__alerted === true"), json!(false));
    }
    cdp.save_png(&a, "rooms-screenshot.png");
    cdp.save_png(&b, "rooms-phone-screenshot.png");
    cdp.assert_no_page_errors();
}

#[test]
fn dm_room_names_sort_by_utf8_bytes_and_hashes_are_checked() {
    let Some(browser) = Browser::launch() else {
        return;
    };
    let server = start();
    let mut cdp = browser.connect();
    let page = cdp.new_page(&format!("http://{}/", server.addr), (800, 600));
    // JS compares UTF-16 units: U+FF5A sorts after an emoji there, before
    // it in UTF-8 (EF.. < F0..), which is the server's order.
    let cases = [
        (("userB", "userA"), "dm:userA:userB"),
        (("userA", "userB"), "dm:userA:userB"),
        (("😀", "\u{FF5A}"), "dm:\u{FF5A}:😀"),
        (("é", "z"), "dm:z:é"),
        (("a:b", "a%"), "dm:a%25:a%3Ab"),
        (("x%3A", "x"), "dm:x:x%253A"),
    ];
    for ((me, other), want) in cases {
        assert_eq!(
            cdp.eval(
                &page,
                &format!("window.jwtchat.dmRoom({}, {})", json!(me), json!(other))
            ),
            json!(want),
            "{me} and {other}"
        );
        // And back: each sees the other.
        assert_eq!(
            cdp.eval(
                &page,
                &format!("window.jwtchat.dmPeer({}, {})", json!(want), json!(me))
            ),
            json!(other)
        );
    }
    // Not one of mine, not spelled as the server spells it, not a DM.
    for name in [
        "dm:userB:userC",
        "dm:userB:userA",
        "dm:userA:",
        "dm:a:b:c",
        "general",
    ] {
        assert_eq!(
            cdp.eval(
                &page,
                &format!("window.jwtchat.dmPeer({}, 'userA')", json!(name))
            ),
            json!(null),
            "{name}"
        );
    }
    // Before logging in there is no "me": a hash names rooms only.
    let hashes = [
        ("", json!("general")),
        ("#room=ops", json!("ops")),
        ("#team-red", json!("team-red")),
        ("#room=Ops", json!(null)),
        ("#room=%3Cimg%20src%3Dx%3E", json!(null)),
        ("#room=%E0%A4%A", json!(null)),
        ("#room=dm%3AuserA%3AuserB", json!(null)),
        ("#room=a-very-long-room-name-of-33-chars", json!(null)),
    ];
    for (hash, want) in hashes {
        assert_eq!(
            cdp.eval(
                &page,
                &format!("window.jwtchat.parseRoomHash({})", json!(hash))
            ),
            want,
            "{hash}"
        );
    }
    cdp.assert_no_page_errors();
}

#[test]
fn a_page_misses_nothing_while_the_server_restarts_with_its_data() {
    let Some(mut r) = restart_while_another_user_writes(true, (800, 600)) else {
        return;
    };
    let (cdp, page) = (&mut r.cdp, &r.page);
    // General, on screen: the 20 follow the page's own message, once each,
    // in order, and nothing says anything is missing.
    let general: Vec<String> = std::iter::once("before the stop".to_string())
        .chain((1..=20).map(|i| format!("missed {i}")))
        .collect();
    cdp.wait_for(page, "texts().length >= 21");
    assert_eq!(cdp.eval(page, "texts()"), json!(general));
    assert_eq!(
        cdp.eval(page, "seqs()"),
        json!((1..=21).collect::<Vec<_>>())
    );
    assert_eq!(missing_markers(cdp, page), json!(0));
    // Random, off screen: its 3 wait as unread, after its older line.
    let random = [
        "random, before the stop",
        "random, missed 1",
        "random, missed 2",
        "random, missed 3",
    ];
    cdp.wait_for(page, &format!("{} === '3'", badge("random")));
    cdp.click(page, &room_button("random"));
    cdp.wait_for(page, "window.jwtchat.room === 'random'");
    assert_eq!(cdp.eval(page, "texts()"), json!(random));
    assert_eq!(cdp.eval(page, "seqs()"), json!([1, 2, 3, 4]));
    assert_eq!(missing_markers(cdp, page), json!(0));

    // A reload resumes too: each room shows its lines again, once.
    cdp.reload(page);
    cdp.wait_for(page, "window.jwtchat.state === 'connected'");
    cdp.wait_for(page, "window.jwtchat.room === 'random'");
    cdp.wait_for(page, &joined("random"));
    cdp.wait_for(page, "texts().length >= 4");
    assert_eq!(cdp.eval(page, "texts()"), json!(random));
    assert_eq!(cdp.eval(page, "seqs()"), json!([1, 2, 3, 4]));
    assert_eq!(missing_markers(cdp, page), json!(0));
    assert_eq!(cdp.eval(page, &badge("random")), json!(""));
    cdp.click(page, &room_button("general"));
    cdp.wait_for(page, "window.jwtchat.room === 'general'");
    assert_eq!(cdp.eval(page, "texts()"), json!(general));
    assert_eq!(
        cdp.eval(page, "seqs()"),
        json!((1..=21).collect::<Vec<_>>())
    );
    assert_eq!(missing_markers(cdp, page), json!(0));
    cdp.assert_no_page_errors();
}

#[test]
fn a_page_says_messages_may_be_missing_when_the_server_lost_its_history() {
    let Some(mut r) = restart_while_another_user_writes(false, (390, 760)) else {
        return;
    };
    let (cdp, page) = (&mut r.cdp, &r.page);
    // A new epoch: the view of general is rebuilt from the new server's
    // history, the marker at its top, and the page's own line is gone
    // with the history that held it.
    cdp.wait_for(page, "texts().length >= 20");
    let general: Vec<String> = (1..=20).map(|i| format!("missed {i}")).collect();
    assert_eq!(cdp.eval(page, "texts()"), json!(general));
    assert_eq!(
        cdp.eval(page, "seqs()"),
        json!((1..=20).collect::<Vec<_>>())
    );
    assert_eq!(missing_markers(cdp, page), json!(1));
    assert_eq!(first_line(cdp, page), json!(["system missing", MISSING]));
    // On a phone: a thin rule across the view, nothing sticking out.
    let marker = cdp.eval(
        page,
        "(m => [m.offsetHeight, Math.round(m.getBoundingClientRect().width / \
           document.querySelector('#messages').clientWidth * 100)])(document.querySelector('#messages .missing'))",
    );
    let (height, width) = (marker[0].as_u64().unwrap(), marker[1].as_u64().unwrap());
    assert!(
        height < 30 && width >= 80,
        "marker {height} px high, {width} % wide"
    );
    assert_eq!(
        cdp.eval(page, "document.documentElement.scrollWidth"),
        json!(390)
    );
    cdp.eval(
        page,
        "document.querySelector('#messages').scrollTop = 0; true",
    );
    cdp.save_png(page, "missing-marker-phone.png");
    // Random too, off screen when it was rebuilt.
    cdp.click(page, &room_button("random"));
    cdp.wait_for(page, "window.jwtchat.room === 'random'");
    cdp.wait_for(page, "texts().length >= 3");
    assert_eq!(
        cdp.eval(page, "texts()"),
        json!(["random, missed 1", "random, missed 2", "random, missed 3"])
    );
    assert_eq!(missing_markers(cdp, page), json!(1));
    assert_eq!(first_line(cdp, page), json!(["system missing", MISSING]));
    cdp.assert_no_page_errors();
}

#[test]
fn a_message_taken_while_the_page_was_cut_off_clears_the_composer() {
    let Some(browser) = Browser::launch() else {
        return;
    };
    let server = start();
    let mut cdp = browser.connect();
    let page = cdp.new_page(&format!("http://{}/", server.addr), (800, 600));
    track_sockets(&mut cdp, &page);
    cdp.log_in(&page, "userA", "passwordA");
    // The page's message leaves it but the connection dies before the
    // echo: here the socket keeps the frame, the page goes offline, and
    // the frame reaches the server through another connection of userA's.
    cdp.eval(
        &page,
        "window.__held = []; window.__sockets.at(-1).send = (d) => window.__held.push(d); true",
    );
    cdp.type_into(&page, "#message-input", "sent just before the tunnel");
    cdp.wait_for(&page, "!document.querySelector('#send-button').disabled");
    cdp.press_enter(&page);
    cdp.wait_for(&page, "window.__held.length === 1");
    set_offline(&mut cdp, &page, true);
    cdp.eval(&page, "window.__sockets.at(-1).close(); true");
    cdp.wait_for(&page, "window.jwtchat.state !== 'connected'");
    let held = cdp.eval(&page, "window.__held[0]");
    let (mut other, _) = server.connect("userA");
    other.send_json(&serde_json::from_str(held.as_str().unwrap()).unwrap());
    assert_eq!(
        other.recv_type("message")["text"],
        "sent just before the tunnel"
    );
    assert_eq!(
        cdp.eval(&page, "document.querySelector('#message-input').value"),
        json!("sent just before the tunnel"),
        "its fate unknown, the text stays meanwhile"
    );

    // Back online: the resumed general brings it among `missed`, with its
    // id: shown once, and taken out of the composer as an echo would.
    set_offline(&mut cdp, &page, false);
    cdp.wait_for(&page, "window.jwtchat.state === 'connected'");
    cdp.wait_for(&page, "texts().length >= 1");
    assert_eq!(
        cdp.eval(&page, "texts()"),
        json!(["sent just before the tunnel"])
    );
    cdp.wait_for(
        &page,
        "document.querySelector('#message-input').value === ''",
    );
    assert_eq!(missing_markers(&mut cdp, &page), json!(0));
    cdp.assert_no_page_errors();
}

/// The marker a rebuilt view starts with.
const MISSING: &str = "Some messages may be missing";

/// What the page lives through in the two restart tests. It writes in
/// general and in `random`, goes back to general, and loses its network;
/// the server is stopped with SIGTERM and started again 3 s later on the
/// same port and with the same secret (its tokens still good), with the
/// same `--data-dir` when `keep_data`, else with none (a new epoch); userB
/// sends 20 messages to general and 3 to random; then the page's network
/// comes back, and it reconnects.
///
/// Why offline: no one can send to a stopped server, so the 20 are sent
/// once it is back, and the page must not be back before they are all in.
/// Its backoff (0.5 s, 1 s, 2 s, …) would race the sender. DevTools'
/// offline mode keeps it away for exactly as long as the test needs, the
/// way a tunnel does (its WebSocket attempts fail, /auth/refresh cannot be
/// reached), and coming back online fires the page's `online` event,
/// which reconnects at once: the page's own reconnect path, not a hook.
fn restart_while_another_user_writes(keep_data: bool, screen: (u32, u32)) -> Option<Restarted> {
    let browser = Browser::launch()?;
    let data = TempDir::new(if keep_data {
        "resume-kept"
    } else {
        "resume-lost"
    });
    let mut args: Vec<&std::ffi::OsStr> = Vec::new();
    if keep_data {
        args.extend(["--data-dir".as_ref(), data.0.as_os_str()]);
    }
    let (mut first, addr) = jwtchat_binary_with("127.0.0.1:0", &args, Some(SECRET));
    let mut cdp = browser.connect();
    let page = cdp.new_page(&format!("http://{addr}/"), screen);
    cdp.log_in(&page, "userA", "passwordA");
    cdp.click(&page, &room_button("random"));
    cdp.wait_for(&page, &joined("random"));
    cdp.send_chat(&page, "random, before the stop");
    cdp.wait_for(&page, "texts().length === 1");
    cdp.click(&page, &room_button("general"));
    cdp.wait_for(&page, "window.jwtchat.room === 'general'");
    cdp.send_chat(&page, "before the stop");
    cdp.wait_for(&page, "texts().length === 1");

    set_offline(&mut cdp, &page, true);
    terminate(&mut first);
    std::thread::sleep(Duration::from_secs(3));
    let (server, _) = jwtchat_binary_with(&addr.to_string(), &args, Some(SECRET));
    let (mut b, _) = TestServer::at(addr).connect("userB");
    b.send_json(&json!({"type": "subscribe", "room": "random"}));
    b.recv_type("subscribed");
    for i in 1..=20 {
        b.say(&format!("missed {i}"));
    }
    for i in 1..=3 {
        b.send_json(
            &json!({"type": "message", "room": "random", "text": format!("random, missed {i}")}),
        );
    }
    // All 23 taken: each came back to B.
    for _ in 0..23 {
        b.recv_type("message");
    }
    assert_ne!(
        cdp.eval(&page, "window.jwtchat.state"),
        json!("connected"),
        "the page was away while B wrote"
    );
    set_offline(&mut cdp, &page, false);
    cdp.wait_for(&page, "window.jwtchat.state === 'connected'");
    Some(Restarted {
        cdp,
        page,
        _browser: browser,
        _server: server,
        _data: data,
    })
}

/// Fields drop in order: the browser and the server before their files.
struct Restarted {
    cdp: Cdp,
    page: Page,
    _browser: Browser,
    _server: Binary,
    _data: TempDir,
}

/// A directory under the target's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the data directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Stops the binary with SIGTERM (a graceful stop) and waits for it to exit.
fn terminate(binary: &mut Binary) {
    let pid = libc::pid_t::try_from(binary.child.id()).expect("pid");
    // SAFETY: sending a signal to our own child process.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill");
    let deadline = Instant::now() + PATIENCE;
    while binary.child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Takes the page's network away (or gives it back), as DevTools'
/// "Offline" does: no new connection, WebSocket or fetch, gets through.
fn set_offline(cdp: &mut Cdp, page: &Page, offline: bool) {
    let session = Some(page.session.as_str());
    cdp.call(session, "Network.enable", json!({}));
    cdp.call(
        session,
        "Network.emulateNetworkConditions",
        json!({ "offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1 }),
    );
}

/// How many "Some messages may be missing" markers the room on screen shows.
fn missing_markers(cdp: &mut Cdp, page: &Page) -> Value {
    cdp.eval(
        page,
        &format!(
            "[...document.querySelectorAll('#messages .system')].filter(e => e.textContent === {}).length",
            json!(MISSING)
        ),
    )
}

/// The class and text of the first line of the room on screen.
fn first_line(cdp: &mut Cdp, page: &Page) -> Value {
    cdp.eval(
        page,
        "(e => e && [e.className, e.textContent])(document.querySelector('#messages').firstElementChild)",
    )
}

/// The room list's rooms and DMs, as shown.
const ROOM_LIST: &str = "[...document.querySelectorAll('#rooms li .name')].map(e => e.textContent)";
const DM_LIST: &str = "[...document.querySelectorAll('#dms li .name')].map(e => e.textContent)";

/// The list entry of `room`.
fn room_entry(room: &str) -> String {
    format!("#room-nav li[data-room={room:?}]")
}

fn room_button(room: &str) -> String {
    format!("{} button", room_entry(room))
}

/// True once the page has joined `room` (its `subscribed` came).
fn joined(room: &str) -> String {
    format!(
        "document.querySelector({})?.dataset.state === 'joined'",
        json!(room_entry(room))
    )
}

/// The unread badge of `room` as shown: "" when hidden.
fn badge(room: &str) -> String {
    format!(
        "(b => b.hidden ? '' : b.textContent)(document.querySelector({}))",
        json!(format!("{} .badge", room_entry(room)))
    )
}

/// Keeps every WebSocket the page opens in `window.__sockets`. Call before
/// logging in.
fn track_sockets(cdp: &mut Cdp, page: &Page) {
    cdp.eval(
        page,
        "window.__sockets = []; const Orig = window.WebSocket; window.WebSocket = class extends Orig { \
           constructor(...a) { super(...a); window.__sockets.push(this); } }; true",
    );
}

/// Delivers `frame` to the page as if its server had sent it: a `message`
/// event on the page's current socket, through the page's own handler.
fn inject(cdp: &mut Cdp, page: &Page, frame: Value) {
    let data = serde_json::to_string(&frame.to_string()).expect("a JS string");
    cdp.eval(
        page,
        &format!(
            "window.__sockets.at(-1).dispatchEvent(new MessageEvent('message', {{ data: {data} }})); true"
        ),
    );
}

/// The names in the online list, in its order.
fn online_names(cdp: &mut Cdp, page: &Page) -> Value {
    cdp.eval(
        page,
        "[...document.querySelectorAll('#online li[data-user]')].map(li => li.dataset.user)",
    )
}

/// The count as shown, and as the page keeps it.
fn online_count(cdp: &mut Cdp, page: &Page) -> Value {
    cdp.eval(
        page,
        "[document.querySelector('#online-count').textContent, window.jwtchat.onlineCount]",
    )
}

/// The "and N more" note, which must be the list's last item, or null.
fn more_note(cdp: &mut Cdp, page: &Page) -> Value {
    cdp.eval(
        page,
        "(li => li && !li.dataset.user ? li.textContent : null)(document.querySelector('#online li:last-child'))",
    )
}

fn system_lines(cdp: &mut Cdp, page: &Page) -> Value {
    cdp.eval(
        page,
        "[...document.querySelectorAll('#messages .system')].map(e => e.textContent)",
    )
}

/// Tells a page it is hidden (or visible again), as a browser does when
/// its tab goes to the background.
fn set_hidden(cdp: &mut Cdp, page: &Page, hidden: bool) {
    cdp.eval(
        page,
        &format!(
            "Object.defineProperty(document, 'hidden', {{ configurable: true, get: () => {hidden} }}); \
             Object.defineProperty(document, 'visibilityState', {{ configurable: true, \
               get: () => {hidden} ? 'hidden' : 'visible' }}); \
             document.dispatchEvent(new Event('visibilitychange')); true"
        ),
    );
}

/// The `jwtchat` binary listening on `bind`, with no `JWTCHAT_SECRET`.
/// Retries while the port, just freed by another run, is unavailable.
fn jwtchat_binary(bind: &str) -> (Binary, std::net::SocketAddr) {
    jwtchat_binary_with(bind, &[], None)
}

/// The `jwtchat` binary listening on `bind` with `args`, and with
/// `JWTCHAT_SECRET` set to `secret` (so its tokens outlive a restart) or
/// unset. Retries while the port, just freed by another run, is
/// unavailable.
fn jwtchat_binary_with(
    bind: &str,
    args: &[&std::ffi::OsStr],
    secret: Option<&[u8]>,
) -> (Binary, std::net::SocketAddr) {
    let mut seen = Vec::new(); // what the last try said
    for _ in 0..20 {
        seen.clear();
        let mut command = Command::new(env!("CARGO_BIN_EXE_jwtchat"));
        command.args(["--bind", bind]).args(args);
        match secret {
            Some(secret) => command.env("JWTCHAT_SECRET", std::str::from_utf8(secret).unwrap()),
            None => command.env_remove("JWTCHAT_SECRET"),
        };
        let mut binary = Binary::spawn(&mut command);
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            match binary.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains("listening on http://") => {
                    let port = line.rsplit(':').next().unwrap().trim().parse().unwrap();
                    return (binary, std::net::SocketAddr::from(([127, 0, 0, 1], port)));
                }
                Ok(line) => seen.push(line),
                Err(_) if matches!(binary.child.try_wait(), Ok(Some(_))) => break,
                Err(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("jwtchat cannot listen on {bind} with {args:?}; it said: {seen:#?}");
}

// ---------------------------------------------------------------------------
// Chromium

/// A headless Chromium with a throwaway profile, killed on drop.
struct Browser {
    child: Child,
    profile: PathBuf,
    devtools_url: String,
}

impl Browser {
    /// Starts Chromium, or returns `None` (after saying so loudly) when it
    /// is not installed and not required.
    fn launch() -> Option<Browser> {
        let Some(binary) = find_chromium() else {
            let required = std::env::var("JWTCHAT_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "JWTCHAT_REQUIRE_BROWSER=1 but no Chromium was found"
            );
            eprintln!(
                "\n\n*** SKIPPING BROWSER TEST: Chromium not found (install the Debian \
                 packages chromium and chromium-driver, or set JWTCHAT_CHROMIUM) ***\n"
            );
            return None;
        };
        let profile = std::env::temp_dir().join(format!(
            "jwtchat-chromium-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut child = Command::new(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));

        // Chromium prints "DevTools listening on ws://..." on stderr; keep
        // draining stderr afterwards so it never blocks on a full pipe.
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let devtools_url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("Chromium announces its DevTools address");
        Some(Browser {
            child,
            profile,
            devtools_url,
        })
    }

    fn connect(&self) -> Cdp {
        let (ws, _) = tungstenite::connect(&self.devtools_url).expect("connect to DevTools");
        if let tungstenite::stream::MaybeTlsStream::Plain(stream) = ws.get_ref() {
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
        }
        Cdp {
            ws,
            next_id: 0,
            page_errors: Vec::new(),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("JWTCHAT_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

// ---------------------------------------------------------------------------
// A minimal Chrome DevTools Protocol client

/// One page, attached in "flat" mode: its commands carry a `sessionId`.
struct Page {
    session: String,
}

struct Cdp {
    ws: WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Uncaught exceptions and console errors (CSP violations among them).
    page_errors: Vec<String>,
}

/// Helpers defined in every page before its own script runs.
const PAGE_HELPERS: &str = "
  window.__alerted = false;
  window.alert = () => { window.__alerted = true; };
  window.texts = () => [...document.querySelectorAll('#messages .message .text')].map(e => e.textContent);
  window.seqs = () => [...document.querySelectorAll('#messages .message')].map(e => Number(e.dataset.seq));
  window.online = (u) => [...document.querySelectorAll('#online li')].some(li => li.dataset.user === u);
";

impl Cdp {
    /// Sends a command (to the browser, or to a page's session) and waits
    /// for its result, collecting page errors from events on the way.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::text(command.to_string()))
            .expect("send CDP command");
        loop {
            let text = match self.ws.read().expect("read CDP") {
                Message::Text(text) => text,
                _ => continue,
            };
            let reply: Value = serde_json::from_str(&text).expect("CDP JSON");
            if reply["id"] == json!(id) {
                assert!(
                    reply["error"].is_null(),
                    "{method} failed: {}",
                    reply["error"]
                );
                return reply["result"].clone();
            }
            self.note_event(&reply);
        }
    }

    fn note_event(&mut self, event: &Value) {
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => self
                .page_errors
                .push(event["params"]["exceptionDetails"].to_string()),
            Some("Log.entryAdded") if event["params"]["entry"]["level"] == "error" => {
                let entry = &event["params"]["entry"];
                // Failed resource loads are expected in the wrong-password
                // and expiry paths (401s, a refused upgrade); script and
                // policy errors are not.
                if entry["source"] != "network" {
                    self.page_errors.push(entry["text"].to_string());
                }
            }
            _ => {}
        }
    }

    /// A new page in its own browser context, with a viewport size.
    fn new_page(&mut self, url: &str, (width, height): (u32, u32)) -> Page {
        let context = self.call(None, "Target.createBrowserContext", json!({}));
        let target = self.call(
            None,
            "Target.createTarget",
            json!({ "url": "about:blank", "browserContextId": context["browserContextId"] }),
        );
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        let page = Page {
            session: attached["sessionId"]
                .as_str()
                .expect("sessionId")
                .to_string(),
        };
        let s = Some(page.session.as_str());
        self.call(s, "Page.enable", json!({}));
        self.call(s, "Runtime.enable", json!({}));
        self.call(s, "Log.enable", json!({}));
        self.call(
            s,
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
        self.call(
            s,
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": PAGE_HELPERS }),
        );
        self.call(s, "Page.navigate", json!({ "url": url }));
        self.wait_for(
            &page,
            "document.readyState === 'complete' && !!window.jwtchat",
        );
        page
    }

    /// Evaluates an expression in the page and returns its value.
    fn eval(&mut self, page: &Page, expression: &str) -> Value {
        let result = self.call(
            Some(&page.session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression} threw {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// Polls until `condition` is true in the page, or fails after
    /// [`PATIENCE`].
    fn wait_for(&mut self, page: &Page, condition: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({ "expression": format!("!!({condition})"), "returnByValue": true }),
            );
            if value["result"]["value"] == json!(true) {
                return;
            }
            if Instant::now() >= deadline {
                let dump = self.eval(page, "document.body.innerText");
                panic!("timed out waiting for: {condition}\npage: {dump}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Focuses an element and types into it as a user would.
    fn type_into(&mut self, page: &Page, selector: &str, text: &str) {
        self.eval(
            page,
            &format!("document.querySelector({selector:?}).focus(); true"),
        );
        self.call(
            Some(&page.session),
            "Input.insertText",
            json!({ "text": text }),
        );
    }

    /// Clicks the element `selector` finds, as a user would.
    fn click(&mut self, page: &Page, selector: &str) {
        self.eval(
            page,
            &format!("document.querySelector({}).click(); true", json!(selector)),
        );
    }

    /// Alt+`key` (`ArrowUp`, `ArrowDown`) on the focused element.
    fn press_alt_arrow(&mut self, page: &Page, key: &str) {
        const ALT: u32 = 1;
        let code = if key == "ArrowUp" { 38 } else { 40 };
        for kind in ["rawKeyDown", "keyUp"] {
            self.call(
                Some(&page.session),
                "Input.dispatchKeyEvent",
                json!({ "type": kind, "key": key, "code": key, "modifiers": ALT,
                        "windowsVirtualKeyCode": code }),
            );
        }
    }

    fn press_enter(&mut self, page: &Page) {
        for kind in ["keyDown", "keyUp"] {
            self.call(
                Some(&page.session),
                "Input.dispatchKeyEvent",
                json!({ "type": kind, "key": "Enter", "code": "Enter",
                        "windowsVirtualKeyCode": 13, "text": if kind == "keyDown" { "\r" } else { "" } }),
            );
        }
    }

    fn log_in(&mut self, page: &Page, user: &str, password: &str) {
        self.type_into(page, "#username", user);
        self.type_into(page, "#password", password);
        self.press_enter(page);
        self.wait_for(page, "window.jwtchat.state === 'connected'");
    }

    /// Types a chat message and sends it with Enter.
    fn send_chat(&mut self, page: &Page, text: &str) {
        self.type_into(page, "#message-input", text);
        self.wait_for(page, "!document.querySelector('#send-button').disabled");
        self.press_enter(page);
        self.wait_for(
            page,
            "document.querySelector('#message-input').value === ''",
        );
    }

    fn reload(&mut self, page: &Page) {
        self.call(Some(&page.session), "Page.reload", json!({}));
        std::thread::sleep(Duration::from_millis(200));
        self.wait_for(
            page,
            "document.readyState === 'complete' && !!window.jwtchat",
        );
    }

    fn set_viewport(&mut self, page: &Page, (width, height): (u32, u32)) {
        self.call(
            Some(&page.session),
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
    }

    /// Saves a PNG of the page under the target directory (and, with
    /// `JWTCHAT_UPDATE_SCREENSHOT=1`, as `docs/screenshot.png`).
    fn screenshot(&mut self, page: &Page) {
        let png = self.save_png(page, "chat-screenshot.png");
        if std::env::var("JWTCHAT_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
            let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs");
            std::fs::create_dir_all(&docs).expect("docs/");
            std::fs::write(docs.join("screenshot.png"), &png).expect("write docs/screenshot.png");
        }
    }

    /// Saves a PNG of the page as `name` under the target directory.
    fn save_png(&mut self, page: &Page, name: &str) -> Vec<u8> {
        let shot = self.call(
            Some(&page.session),
            "Page.captureScreenshot",
            json!({ "format": "png" }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("PNG data"))
            .expect("base64 PNG");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&out, &png).expect("write screenshot");
        png
    }

    fn assert_no_page_errors(&mut self) {
        assert!(
            self.page_errors.is_empty(),
            "page errors: {:#?}",
            self.page_errors
        );
    }
}
