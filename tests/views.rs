//! The views: `kloigos timeline` (golden outputs on a fixed clock, a real
//! terminal in tmux) and `kloigos dashboard` (the site, its read-only
//! server, headless Chromium, the housekeeper regenerating it).

use std::time::{Duration, Instant};

use kloigos_tests::cmd::Run;
use kloigos_tests::housekeeper::HkNode;
use kloigos_tests::require_root;
use kloigos_tests::views::{
    artifact, big_cluster, chromium, dump_dom, dump_dom_cpu, fixture, golden, Server, Tmux,
    HOSTILE_NOTE, NOW,
};

/// Builds `c`'s dashboard at NOW into `site` under its directory, and
/// returns that directory.
fn build_site(c: &kloigos_tests::cluster::TempCluster) -> std::path::PathBuf {
    let out = c.dir.path().join("site");
    c.run(&["dashboard", "--now", NOW, "--out", out.to_str().unwrap()])
        .ok()
        .out_has("index.html");
    out
}

fn timeline(c: &kloigos_tests::cluster::TempCluster, extra: &[&str]) -> Run {
    let mut args = vec!["timeline", "--now", NOW];
    args.extend_from_slice(extra);
    c.run(&args)
}

#[test]
fn timeline_golden_at_80_and_160_columns_with_and_without_colour() {
    let c = fixture();
    for width in ["80", "160"] {
        for color in ["never", "always"] {
            let r = timeline(
                &c,
                &["--width", width, "--color", color, "--fits", "units=2,t=4h"],
            );
            r.ok();
            golden(&format!("timeline-{width}-{color}.txt"), &r.stdout);
        }
        let r = timeline(&c, &["--width", width, "--span", "7d", "--color", "never"]);
        r.ok();
        golden(&format!("timeline-week-{width}.txt"), &r.stdout);
    }
}

#[test]
fn timeline_lines_fit_the_width_and_colour_follows_the_flag() {
    let c = fixture();
    for width in [40usize, 80, 160] {
        let r = timeline(&c, &["--width", &width.to_string()]);
        r.ok();
        for line in r.stdout.lines() {
            assert!(
                line.chars().count() <= width,
                "line wider than {width}: {line:?}"
            );
        }
        assert!(!r.stdout.contains('\u{1b}'), "no colour off a terminal");
    }
    let wide = timeline(&c, &["--width", "160"]);
    let axis = wide.stdout.lines().nth(2).expect("hour axis");
    assert!(axis.chars().count() > 140, "160 columns are used: {axis:?}");
    let colour = timeline(&c, &["--color", "always"]);
    assert!(colour.stdout.contains("\u{1b}[48;5;"), "{}", colour.stdout);
    // The caller's own booking (dora, the uid running the tests) stands out.
    assert!(colour.stdout.contains("\u{1b}[1;4m"));
    let plain = timeline(&c, &["--width", "160"]);
    assert!(plain.stdout.contains("{dora alpha:4#"), "{}", plain.stdout);
    assert!(plain.stdout.contains("[alice alpha:1="), "{}", plain.stdout);
}

#[test]
fn timeline_shows_a_hostile_note_as_text() {
    let c = fixture();
    let r = timeline(&c, &["--width", "200"]);
    r.ok();
    assert!(!r.stdout.contains('\u{1b}') && !r.stdout.contains('\u{7}'));
    assert!(
        r.stdout.contains("\\u{1b}]0;pwned\\u{7} done"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("<script>document.title='pwned'</script>"));
    assert!(HOSTILE_NOTE.contains('\u{1b}'));
}

#[test]
fn timeline_json_gives_every_interval_and_the_slot() {
    let c = fixture();
    let j = timeline(&c, &["--json", "--fits", "units=2,t=4h"])
        .ok()
        .json();
    assert_eq!(j["from"], "2026-10-24T20:00:00Z");
    assert_eq!(j["to"], "2026-10-25T20:00:00Z");
    let nodes = j["nodes"].as_array().expect("nodes");
    let names: Vec<&str> = nodes.iter().map(|n| n["node"].as_str().unwrap()).collect();
    assert_eq!(names, ["alpha", "beta", "gamma"]);
    let kinds = |node: usize, unit: usize| -> Vec<String> {
        nodes[node]["units"][unit]["intervals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["kind"].as_str().unwrap().to_string())
            .collect()
    };
    // alice across midnight and the DST change, then free, alice, dora, free.
    assert_eq!(
        kinds(0, 0),
        ["booked", "free", "booked", "free", "booked", "free"]
    );
    let first = &nodes[0]["units"][0]["intervals"][0];
    assert_eq!(first["user"], "alice");
    assert_eq!(first["end"], "2026-10-25T02:00:00Z");
    assert_eq!(kinds(1, 0), ["booked", "drained"]);
    assert_eq!(nodes[1]["drained"], "disk swap");
    assert_eq!(kinds(2, 0), ["closed"]);
    // Intervals cover the span without gaps.
    for n in nodes {
        for u in n["units"].as_array().unwrap() {
            let iv = u["intervals"].as_array().unwrap();
            assert_eq!(iv[0]["start"], j["from"]);
            assert_eq!(iv[iv.len() - 1]["end"], j["to"]);
            for w in iv.windows(2) {
                assert_eq!(w[0]["end"], w[1]["start"]);
            }
        }
    }
    let slot = &j["fits"];
    assert_eq!(slot["node"], "alpha");
    assert_eq!(slot["start"], "2026-10-25T02:00:00Z");
    assert_eq!(
        slot["alloc"],
        "kloigos alloc -w alpha --units 2 -t 4h --at 2026-10-25T03:00:00+01:00"
    );
    // -l and --user narrow the view.
    let j = timeline(&c, &["--json", "-l", "big", "--user", "bob"])
        .ok()
        .json();
    assert_eq!(j["nodes"].as_array().unwrap().len(), 1);
    let booked: Vec<_> = j["bookings"].as_array().unwrap().iter().collect();
    assert_eq!(booked.len(), 1);
    assert_eq!(booked[0]["user"], "bob");
}

#[test]
fn the_alloc_line_under_the_chart_books_the_slot_it_shows() {
    let c = kloigos_tests::cluster::TempCluster::new();
    c.add_node("n1", "0-3", Some(1), None);
    c.add_node("n2", "0-1", Some(1), None);
    c.run(&["alloc", "-w", "n1", "--units", "3", "-t", "2h"])
        .ok();
    c.run(&["alloc", "-w", "n2", "--units", "1", "-t", "3h"])
        .ok();
    let j = c
        .run(&["--json", "timeline", "--fits", "units=2,t=1h"])
        .ok()
        .json();
    let slot = &j["fits"];
    assert_eq!(slot["node"], "n1", "{slot}");
    let alloc = slot["alloc"].as_str().unwrap();
    let args: Vec<&str> = alloc.split(' ').skip(1).collect();
    let b = c.run(&[&["--json"], args.as_slice()].concat()).ok().json();
    assert_eq!(
        (&b["node"], &b["start"], &b["end"]),
        (&slot["node"], &slot["start"], &slot["end"])
    );
    assert_eq!(b["units"], slot["units"]);
}

#[test]
fn timeline_what_if_clock_reads_only() {
    let c = fixture();
    let before: Vec<Vec<u8>> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|n| c.state_bytes(n))
        .collect();
    timeline(&c, &["--span", "7d", "--fits", "whole"]).ok();
    build_site(&c);
    c.run(&["dashboard", "--now", NOW]).code(2).err_has("--out");
    let after: Vec<Vec<u8>> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|n| c.state_bytes(n))
        .collect();
    assert_eq!(before, after);
    // The what-if clock exists on the views only.
    c.run(&["alloc", "--now", NOW]).code(2);
    c.run(&["info", "--now", NOW]).code(2);
}

#[test]
fn timeline_refuses_bad_input_naming_it() {
    let c = fixture();
    timeline(&c, &["--fits", "units=2,gpus=1,t=4h"])
        .code(2)
        .err_has("give one of units, cpus, gpus or whole");
    timeline(&c, &["--fits", "units=two"])
        .code(2)
        .err_has("units=2,t=4h");
    timeline(&c, &["--span", "40d"]).code(2).err_has("--span");
    timeline(&c, &["--from", "someday"])
        .code(2)
        .err_has("someday");
    timeline(&c, &["--user", "../x"]).code(2).err_has("user");
    timeline(&c, &["nosuchnode"])
        .code(1)
        .err_has("no node 'nosuchnode'");
    c.run(&["cal", "--now", NOW, "alpha"])
        .ok()
        .out_has("alpha u0");
}

/// Runs the timeline in a tmux pane of `cols` columns; returns the pane's
/// text (plain and with escapes) once it is done.
fn in_tmux(cols: u16, env: &str) -> (Tmux, String, String) {
    let c = fixture();
    let t = Tmux::new(cols, 60);
    assert_eq!(t.width(), usize::from(cols));
    let bin = kloigos_tests::bin("kloigos");
    t.type_line(&format!(
        "{env} {} --shared {} timeline --now {NOW}; echo END$((40+2))",
        bin.display(),
        c.shared().display()
    ));
    let plain = t.wait_for("END42");
    let escaped = t.capture(true);
    (t, plain, escaped)
}

#[test]
fn timeline_on_a_real_terminal_narrow_and_wide() {
    for cols in [50u16, 200] {
        let (t, plain, escaped) = in_tmux(cols, "");
        let out: Vec<&str> = plain
            .lines()
            .skip_while(|l| !l.starts_with("Sat 24 Oct"))
            .take_while(|l| !l.starts_with("END42"))
            .collect();
        assert!(out.len() > 10, "{plain}");
        for line in &out {
            assert!(
                line.chars().count() <= usize::from(cols),
                "a line wrapped at {cols} columns: {line:?}"
            );
        }
        let axis = out[2].chars().count();
        assert!(
            axis > usize::from(cols) * 3 / 4,
            "the chart uses the terminal's width ({axis} of {cols})"
        );
        assert!(out.iter().any(|l| l.starts_with("alpha u0")));
        assert!(escaped.contains("48;5;"), "colour on a terminal");
        // The OSC escape in bob's note did not reach the terminal.
        assert_ne!(t.title(), "pwned");
        if cols >= 160 {
            assert!(plain.contains("\\u{1b}]0;pwned"), "{plain}");
        }
    }
    let (_t, _plain, escaped) = in_tmux(100, "NO_COLOR=1");
    assert!(!escaped.contains("48;5;"), "NO_COLOR is honoured");
}

#[test]
fn dashboard_site_shows_only_what_info_shows() {
    let c = fixture();
    let out = build_site(&c);
    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(page.contains("Content-Security-Policy"));
    assert!(page.contains("default-src 'none'"));
    assert!(!page.contains("innerHTML"));
    let snap: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("cluster.json")).unwrap()).unwrap();
    let info = c.run(&["info", "--json"]).ok().json();
    let info_keys: Vec<String> = info["nodes"][0]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let derived = ["stale", "idle", "strays", "timeline"];
    for n in snap["nodes"].as_array().unwrap() {
        for k in n.as_object().unwrap().keys() {
            assert!(
                info_keys.contains(k) || derived.contains(&k.as_str()),
                "cluster.json shows {k}, which info --json does not"
            );
        }
    }
    let policy = snap["policy"].as_object().unwrap();
    for private in ["admins", "bypass_users", "admin_group", "service_uid"] {
        assert!(!policy.contains_key(private), "{private}");
    }
    assert_eq!(snap["generated"], NOW);
    let gamma = &snap["nodes"][2];
    assert_eq!(
        (gamma["name"].as_str(), gamma["stale"].as_bool()),
        (Some("gamma"), Some(true))
    );
    assert_eq!(snap["nodes"][0]["stale"], false);
    // Files belong to whoever ran it.
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    assert_eq!(std::fs::metadata(out.join("index.html")).unwrap().uid(), me);
    // A file where the directory should be: refused, named, nothing lost.
    let file = c.dir.path().join("afile");
    std::fs::write(&file, "keep").unwrap();
    c.run(&["dashboard", "--out", file.to_str().unwrap()])
        .code(3)
        .err_has("afile");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
}

#[test]
fn dashboard_server_is_read_only_and_refuses_traversal_and_long_heads() {
    let c = fixture();
    let out = build_site(&c);
    std::fs::write(out.join("secret"), "not served").unwrap();
    let mut s = Server::start(&out);
    let page = s.raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("Content-Type: text/html"));
    assert!(page.contains("X-Content-Type-Options: nosniff"));
    let json = s.raw(b"GET /cluster.json HTTP/1.1\r\n\r\n");
    assert!(json.contains("application/json") && json.contains("\"alpha\""));
    let head = s.raw(b"HEAD /index.html HTTP/1.1\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    let before = std::fs::read(out.join("cluster.json")).unwrap();
    for write in ["POST", "PUT", "DELETE"] {
        let r = s.raw(
            format!("{write} /cluster.json HTTP/1.1\r\nContent-Length: 2\r\n\r\n{{}}").as_bytes(),
        );
        assert!(r.starts_with("HTTP/1.1 405"), "{write}: {r}");
        assert!(r.contains("Allow: GET, HEAD"));
    }
    assert_eq!(std::fs::read(out.join("cluster.json")).unwrap(), before);
    for path in [
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/..%2fsecret",
        "/x/../secret",
    ] {
        let r = s.raw(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes());
        assert!(r.starts_with("HTTP/1.1 400"), "{path}: {r}");
        assert!(!r.contains("root:"));
    }
    let r = s.raw(b"GET /secret HTTP/1.1\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 404") && !r.contains("not served"),
        "{r}"
    );
    // A symlink planted in place of the page is not followed.
    let page_bytes = std::fs::read(out.join("index.html")).unwrap();
    std::fs::remove_file(out.join("index.html")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", out.join("index.html")).unwrap();
    let r = s.raw(b"GET / HTTP/1.1\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 500") && !r.contains("root:"), "{r}");
    std::fs::remove_file(out.join("index.html")).unwrap();
    let r = s.raw(b"GET / HTTP/1.1\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 404") && r.contains("kloigos dashboard --out"),
        "{r}"
    );
    std::fs::write(out.join("index.html"), page_bytes).unwrap();
    let mut long = b"GET / HTTP/1.1\r\nX-Filler: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 64 * 1024));
    long.extend_from_slice(b"\r\n\r\n");
    let r = s.raw(&long);
    assert!(r.starts_with("HTTP/1.1 431"), "{}", &r[..r.len().min(200)]);
    // Still serving after all that.
    assert!(s.alive());
    assert!(s.raw(b"GET / HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200"));
    // Connections are bounded: 32 idle clients hold every slot, the next is turned away...
    let idle: Vec<std::net::TcpStream> = (0..32)
        .map(|_| std::net::TcpStream::connect(&s.addr).unwrap())
        .collect();
    let r = s.raw(b"GET / HTTP/1.1\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    // ...and served again once they leave.
    drop(idle);
    assert!(kloigos_tests::poll::wait_until(
        Duration::from_secs(30),
        || s.raw(b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200")
    ));
    // A client that never finishes its request head is answered 408 at the
    // head deadline, and the connection is closed.
    let mut slow = std::net::TcpStream::connect(&s.addr).unwrap();
    std::io::Write::write_all(&mut slow, b"GET / HT").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut slow, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // A file past the served bound (64 MiB, kloigos-dashboard's MAX_FILE)
    // is refused, not read.
    std::fs::OpenOptions::new()
        .write(true)
        .open(out.join("cluster.json"))
        .unwrap()
        .set_len(64 * 1024 * 1024 + 1)
        .unwrap();
    let r = s.raw(b"GET /cluster.json HTTP/1.1\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 500"), "{}", &r[..r.len().min(200)]);
}

#[test]
fn dashboard_serve_writes_then_execs_the_server() {
    let c = fixture();
    let out = c.dir.path().join("served");
    let s = Server::spawn(c.kloigos().args([
        "dashboard",
        "--now",
        NOW,
        "--out",
        out.to_str().unwrap(),
        "--serve",
        "127.0.0.1:0",
    ]));
    let json = s.raw(b"GET /cluster.json HTTP/1.1\r\n\r\n");
    assert!(json.starts_with("HTTP/1.1 200"), "{json}");
    assert!(json.contains(&format!("\"generated\":\"{NOW}\"")));
    // A bad address: the server says so, and the site stays written.
    let r = c.run(&[
        "dashboard",
        "--out",
        out.to_str().unwrap(),
        "--serve",
        "not-an-address",
    ]);
    r.code(3).err_has("cannot listen on not-an-address");
    assert!(out.join("index.html").exists());
}

#[test]
fn dashboard_in_headless_chromium() {
    let c = fixture();
    let out = build_site(&c);
    let s = Server::start(&out);
    let dom = dump_dom(&s.url());
    assert!(dom.contains("data-count=\"3\""), "node count:\n{dom}");
    // alice's booking across midnight and the DST change, with user and times.
    assert!(
        dom.contains("data-booking=\"alpha:1\" data-user=\"alice\" title=\"alice · alpha:1 · Sat 24 Oct, 21:00 – Sun 25 Oct, 03:00\""),
        "alice's bar:\n{dom}"
    );
    // gamma's heartbeat is two hours old.
    assert!(
        dom.contains("<tr class=\"node stale\" data-node=\"gamma\" data-state=\"stale\">"),
        "{dom}"
    );
    assert!(dom.contains("<td class=\"heartbeat stale\">stale, 2 h ago</td>"));
    // The note is text: escaped in the DOM, never run, no element made from it.
    assert!(dom.contains(
        "<td class=\"note\">&lt;script&gt;document.title='pwned'&lt;/script&gt;&lt;img src=x"
    ));
    assert!(dom.contains("onerror=\"document.title='pwned'\"&gt; \\u{1b}]0;pwned\\u{7} done</td>"));
    assert!(dom.contains("<title>kloigos</title>"));
    assert!(!dom.contains("<img"));
    assert_eq!(
        dom.matches("<script>").count(),
        1,
        "only the page's own script"
    );
    // The snapshot's age is shown.
    assert!(dom.contains("snapshot of Sat 24 Oct, 22:30,"));

    // Filters from the link: bob's bookings only, the other bars dimmed.
    let dom = dump_dom(&format!("{}#user=bob", s.url()));
    assert!(dom.contains("<span id=\"shown\">1 shown</span>"), "{dom}");
    assert!(dom.contains("class=\"seg bar hit\" data-booking=\"alpha:2\""));
    assert!(dom.contains("class=\"seg bar dim\" data-booking=\"alpha:1\""));
    let dom = dump_dom(&format!("{}#node=gamma", s.url()));
    assert!(dom.contains("<span id=\"shown\">1 shown</span>"), "{dom}");
    assert!(dom.contains("data-booking=\"gamma:1\" data-user=\"erin\" data-node=\"gamma\""));

    let png = artifact("dashboard.png");
    let _ = std::fs::remove_file(&png);
    let r = chromium(
        &s.url(),
        &[
            "--virtual-time-budget=10000",
            "--window-size=1400,1100",
            &format!("--screenshot={}", png.display()),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000);
    eprintln!("screenshot: {}", png.display());
}

#[test]
fn dashboard_of_100_nodes_with_a_week_of_bookings_renders_quickly() {
    let big = big_cluster(100);
    let small = big_cluster(1);
    let site = build_site;
    let t = Instant::now();
    let big_site = site(&big);
    let out_s = t.elapsed().as_secs_f64();
    let small_site = site(&small);
    let bookings: usize = serde_json::from_slice::<serde_json::Value>(
        &std::fs::read(big_site.join("cluster.json")).unwrap(),
    )
    .unwrap()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["bookings"].as_array().unwrap().len())
        .sum();
    assert!(bookings > 8000, "{bookings} bookings");
    // The terminal view of the same cluster, against info (same run, same machine).
    let t = Instant::now();
    big.run(&["info"]).ok();
    let info_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let week = big.run(&["timeline", "--now", NOW, "--span", "7d", "--width", "160"]);
    let cal_s = t.elapsed().as_secs_f64();
    week.ok().out_has("bookings in view; name nodes");
    assert_eq!(
        week.stdout.lines().filter(|l| l.contains(" u7 ")).count(),
        100
    );
    eprintln!(
        "100 nodes: timeline --span 7d {cal_s:.2} s, dashboard --out {out_s:.2} s, against info {info_s:.2} s (ratios {:.2}, {:.2})",
        cal_s / info_s,
        out_s / info_s
    );
    let big_srv = Server::start(&big_site);
    let small_srv = Server::start(&small_site);
    // Same browser, same flags: the difference is fetching and rendering
    // the big snapshot. Bounded on CPU time, which a loaded machine does
    // not inflate the way it does wall-clock time; both reported.
    let t = Instant::now();
    let (small_dom, small_cpu) = dump_dom_cpu(&small_srv.url());
    let small_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (big_dom, big_cpu) = dump_dom_cpu(&big_srv.url());
    let big_s = t.elapsed().as_secs_f64();
    assert!(small_dom.contains("data-count=\"1\""));
    assert!(big_dom.contains("data-count=\"100\""));
    assert!(big_dom.matches("class=\"seg bar").count() > 8000);
    let json_len = std::fs::metadata(big_site.join("cluster.json"))
        .unwrap()
        .len();
    eprintln!(
        "dashboard: 100 nodes, {bookings} bookings, cluster.json {} KiB, DOM {} KiB: \
         wall {big_s:.2} s against {small_s:.2} s for 1 node (ratio {:.2}, +{:.2} s); \
         CPU {big_cpu:.2} s against {small_cpu:.2} s (ratio {:.2}, +{:.2} s)",
        json_len / 1024,
        big_dom.len() / 1024,
        big_s / small_s,
        big_s - small_s,
        big_cpu / small_cpu,
        big_cpu - small_cpu,
    );
    assert!(
        big_cpu - small_cpu < 5.0,
        "100 nodes took {:.2} CPU seconds more than 1 node",
        big_cpu - small_cpu
    );
}

#[test]
fn housekeeper_regenerates_the_dashboard_when_configured() {
    require_root!();
    let site = tempfile::tempdir().unwrap();
    let dir = site.path().join("dash");
    // A whole-node node under the default policy, with this housekeeper config.
    let node = |name: &str, config: serde_json::Value| {
        let policy = kloigos_core::policy::Policy::default();
        HkNode::new(name, policy, "0-3", None, None, config)
    };
    let n = node("hk1", serde_json::json!({ "dashboard_dir": dir }));
    n.pass(&[]).ok();
    let snap: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("cluster.json")).unwrap()).unwrap();
    assert_eq!(snap["nodes"][0]["name"], "hk1");
    // The pass wrote facts before the site: the node is not stale.
    assert_eq!(snap["nodes"][0]["stale"], false);
    assert!(dir.join("index.html").exists());
    // Without the key, no site.
    let other = node("hk2", serde_json::json!({}));
    other.pass(&[]).ok();
    assert!(!other.cluster.dir.path().join("dash").exists());
}

#[test]
fn the_setuid_views_run_as_the_caller() {
    require_root!();
    use kloigos_tests::setuid::{As, Install};
    use std::os::unix::fs::MetadataExt;
    let i = Install::new(&format!("vw{}", std::process::id() % 100_000), &[]);
    i.kloigos(As::User(&i.alice), &["alloc", "-w", &i.node, "-t", "1h"])
        .ok();
    // alice's own booking stands out in her timeline, not in bob's.
    let args = ["timeline", "--width", "120", "--span", "3h"];
    let mine = i.kloigos(As::User(&i.alice), &args);
    let bar = format!("{{{} {}:1#", i.alice.name, i.node);
    assert!(mine.ok().stdout.contains(&bar), "{bar}:\n{}", mine.stdout);
    let theirs = i.kloigos(As::User(&i.bob), &args);
    let bar = format!("[{} {}:1=", i.alice.name, i.node);
    assert!(
        theirs.ok().stdout.contains(&bar),
        "{bar}:\n{}",
        theirs.stdout
    );
    // The site is written as alice, where alice may write.
    let www = i.dir.path().join("alice-www");
    std::fs::create_dir(&www).unwrap();
    i.give(&www, &i.alice);
    i.kloigos(
        As::User(&i.alice),
        &["dashboard", "--out", www.to_str().unwrap()],
    )
    .ok();
    for f in ["index.html", "cluster.json"] {
        assert_eq!(
            std::fs::metadata(www.join(f)).unwrap().uid(),
            i.alice.uid,
            "{f}"
        );
    }
    // Never as the service account: the shared tree is not alice's to write.
    let before = i.snapshot();
    let into_share = i.shared().join("www");
    i.kloigos(
        As::User(&i.alice),
        &["dashboard", "--out", into_share.to_str().unwrap()],
    )
    .code(3)
    .err_has("www");
    assert!(!into_share.exists());
    assert_eq!(before, i.snapshot());
}
