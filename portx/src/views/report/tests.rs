//! The report of the fixture incident (see [`super::fixture`]).

use serde_json::Value;

use super::{fixture::*, html, text};
use crate::capture::{Record, reader::ReadStatus};

fn json() -> Value {
    serde_json::to_value(mysql_report()).unwrap()
}

#[test]
fn json_has_both_failures_with_their_holder() {
    let v = json();
    let f = v["failures"].as_array().unwrap();
    assert_eq!(f.len(), 2, "{v:#}");
    assert_eq!(
        (&f[0]["event"], &f[0]["errno"], &f[0]["pid"], &f[0]["comm"]),
        (
            &"connect_error".into(),
            &99.into(),
            &4242.into(),
            &"client".into()
        )
    );
    assert_eq!(
        (&f[0]["daddr"], &f[0]["dport"], &f[0]["count"]),
        (&"127.0.0.1".into(), &9000.into(), &1.into())
    );
    assert_eq!(f[0]["holder"]["pid"], 4242);
    assert_eq!(
        (
            &f[1]["event"],
            &f[1]["errno"],
            &f[1]["pid"],
            &f[1]["comm"],
            &f[1]["sport"]
        ),
        (
            &"bind_error".into(),
            &98.into(),
            &5151.into(),
            &"mysqld".into(),
            &3306.into()
        )
    );
    // The holder of 3306: the client's connection that took it as its source port.
    let h = &f[1]["holder"];
    assert_eq!(
        (&h["pid"], &h["sport"], &h["dport"], &h["ephemeral"]),
        (&4242.into(), &3306.into(), &9000.into(), &true.into())
    );
    assert_eq!(f[1]["first"], "2024-03-01T12:00:03.000Z");
    assert_eq!(v["first_failure"]["event"], "connect_error");
    assert_eq!(v["first_failure"]["at"], "2024-03-01T12:00:02.000Z");
}

#[test]
fn json_destination_peaks_at_capacity() {
    let v = json();
    let d = &v["destinations"][0];
    assert_eq!(v["destinations"].as_array().unwrap().len(), 1);
    assert_eq!(
        (&d["daddr"], &d["dport"], &d["netns"]),
        (&"127.0.0.1".into(), &9000.into(), &NS.into())
    );
    assert_eq!((&d["peak_used"], &d["capacity"]), (&4.into(), &4.into()));
    assert_eq!(d["peak_at"], "2024-03-01T12:00:01.300Z");
    assert_eq!(
        d["holders_at_peak"],
        serde_json::json!([{"pid": 4242, "comm": "client", "ports": 4, "cgroup_id": 77,
            "workload": {"kind": "service", "name": "app.service", "unit": "app.service"}}])
    );
    assert_eq!(
        (&d["timewait_at_peak"], &d["timewait_share"]),
        (&0.into(), &0.0.into())
    );
    let pts = d["series"]["points"].as_array().unwrap();
    assert!(pts.iter().any(|p| p["used"] == 4));
    assert_eq!(d["series"]["failures"].as_array().unwrap().len(), 2);
}

#[test]
fn json_span_host_files_complete() {
    let v = json();
    let s = &v["span"];
    assert_eq!(
        (&s["start"], &s["end"]),
        (
            &"2024-03-01T12:00:00.000Z".into(),
            &"2024-03-01T12:00:04.000Z".into()
        )
    );
    assert_eq!(
        (&s["start_ns"], &s["end_ns"]),
        (&START_NS.into(), &(START_NS + 4 * S).into())
    );
    assert_eq!(s["events"], 14);
    assert_eq!(v["host"]["hostname"], "db1");
    assert_eq!(v["host"]["kernel"], "6.12.0-portx");
    assert_eq!(v["files"][0]["seq"], 0);
    assert_eq!(v["files"][0]["path"], "incident.portx");
    assert_eq!(v["complete"]["ok"], true);
    assert_eq!(v["trigger"], Value::Null);
    for key in [
        "dropped",
        "skipped_runs",
        "closes_missed",
        "evicted",
        "torn_tail",
        "corrupt",
        "gaps",
        "unknown_frames",
    ] {
        assert!(v["complete"].get(key).is_some(), "{key}");
    }
}

#[test]
fn text_names_the_failures_and_the_peak() {
    let t = text::render(&mysql_report());
    println!("{t}");
    for want in [
        "2024-03-01T12:00:00.000Z .. 2024-03-01T12:00:04.000Z",
        "14 events",
        "complete: no kernel drops",
        "EADDRNOTAVAIL",
        "EADDRINUSE",
        "client(4242)",
        "mysqld(5151)",
        "bind() of port 3306",
        "held by client(4242) in app.service 127.0.0.1:3306 -> 127.0.0.1:9000",
        "client(4242) in app.service",
        "peak      4 of 4",
        "(100%)",
    ] {
        assert!(t.contains(want), "no {want:?} in\n{t}");
    }
    assert!(t.lines().all(|l| l == l.trim_end()));
}

#[test]
fn html_is_self_contained_with_a_chart_per_destination() {
    let r = mysql_report();
    let h = html::render(&r);
    assert!(h.starts_with("<!DOCTYPE html>"));
    assert_eq!(h.matches("<svg").count(), r.destinations.len());
    assert_eq!(
        h.matches("<polyline class=\"used\"").count(),
        r.destinations.len()
    );
    for bad in ["<script", "http://", "https://", "<link", "@import", "url("] {
        assert!(!h.contains(bad), "{bad} in the page");
    }
    assert!(h.contains("@media print"));
    assert!(h.contains("12:00:00") && h.contains("mysqld"));
}

#[test]
fn html_escapes_recorded_text() {
    let mut records = mysql_incident();
    for r in &mut records {
        if let Record::Input(crate::model::input::Input::Event(e)) = r
            && e.pid == 5151
        {
            e.comm = "<script>x".into();
        }
    }
    let status = status_of(&records);
    let h = html::render(&report_of(&[("a&b.portx", records, status)]));
    assert!(!h.contains("<script>x"));
    assert!(h.contains("&lt;script&gt;x") && h.contains("a&amp;b.portx"));
}

#[test]
fn events_are_trace_json_lines() {
    let mut out = Vec::new();
    let mut w = super::EventWriter::default();
    for r in mysql_incident() {
        w.write(&mut out, &r).unwrap();
    }
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 14);
    for v in &lines {
        for key in crate::views::output::TRACE_JSON_FIELDS {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
    }
    assert_eq!(lines[12]["error"], "EADDRNOTAVAIL");
}

/// The incident split in two files, with file 1 of the set missing in between.
fn split_with_missing_seq() -> Vec<(&'static str, Vec<Record>, ReadStatus)> {
    let all = mysql_incident();
    let cut = 8;
    let first: Vec<Record> = all[..cut].to_vec();
    let mut second = vec![
        Record::Header(Box::new(header(2, START_NS + S + 250_000_000))),
        state(START_NS + S + 250_000_000),
    ];
    second.extend_from_slice(&all[cut..]);
    let (s1, s2) = (status_of(&first), status_of(&second));
    vec![("a.portx", first, s1), ("c.portx", second, s2)]
}

#[test]
fn missing_file_of_a_set_is_a_gap() {
    let r = report_of(&split_with_missing_seq());
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["complete"]["ok"], false);
    let g = &v["complete"]["gaps"][0];
    assert_eq!(
        (&g["kind"], &g["after_seq"], &g["before_seq"]),
        (&"missing_files".into(), &0.into(), &2.into())
    );
    assert_eq!(g["missing"], serde_json::json!([1, 1]));
    assert!(text::render(&r).contains("file 1 of the set missing"));
    // One timeline: all events, both failures.
    assert_eq!(r.span.events, 14);
    assert_eq!(r.failures.len(), 2);
}

#[test]
fn continuous_set_skips_the_repeated_state() {
    let mut files = split_with_missing_seq();
    files[1].1[0] = Record::Header(Box::new(header(1, START_NS + S + 250_000_000)));
    let r = report_of(&files);
    assert!(r.complete.ok, "{:?}", r.complete);
    // Reloading the (empty) state would not change this, but a duplicate of the
    // sockets would: the peak stays 4 and the holder keeps its 4 ports.
    assert_eq!(r.destinations[0].peak_used, 4);
    assert_eq!(r.destinations[0].holders_at_peak[0].ports, 4);
}

#[test]
fn torn_tail_is_reported() {
    let mut records = mysql_incident();
    records.truncate(10);
    let status = ReadStatus {
        torn_tail: Some(1234),
        ..status_of(&records)
    };
    let r = report_of(&[("torn.portx", records, status)]);
    assert!(!r.complete.ok);
    assert_eq!(r.complete.torn_tail, vec!["torn.portx".to_owned()]);
    assert_eq!(r.files[0].torn_tail, Some(1234));
    assert!(text::render(&r).contains("torn tail in torn.portx"));
    assert!(html::render(&r).contains("torn tail at offset 1234"));
}

#[test]
fn mixed_recordings_are_refused() {
    let mut b = super::ReportBuilder::new();
    b.begin_file("a");
    b.feed(&Record::Header(Box::new(header(0, START_NS))))
        .unwrap();
    b.end_file(&ReadStatus::default());
    b.begin_file("b");
    let mut other = header(1, START_NS);
    other.recording_id = 7;
    let err = b
        .feed(&Record::Header(Box::new(other.clone())))
        .unwrap_err();
    assert!(err.to_string().contains("another recording"), "{err}");
    let mut files = vec![
        ("b".into(), Some(other)),
        ("a".into(), Some(header(0, START_NS))),
    ];
    assert!(super::timeline_order(&mut files).is_err());
    let mut files = vec![
        ("b".into(), Some(header(1, START_NS))),
        ("a".into(), Some(header(0, START_NS))),
    ];
    super::timeline_order(&mut files).unwrap();
    assert_eq!(files[0].0, std::path::PathBuf::from("a"));
}

#[test]
fn json_and_text_carry_the_diagnoses_at_the_end() {
    // Four established connections fill the four-port range: no setting frees them,
    // and the range is the limit.
    let v = json();
    let ids: Vec<&str> = v["diagnoses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["concurrency-at-capacity", "range-too-small"],
        "{}",
        v["diagnoses"]
    );
    assert_eq!(v["diagnoses"][1]["dport"], 9000);
    let t = super::text::render(&mysql_report());
    assert!(t.contains("Diagnoses (at the end of the recording)"), "{t}");
    assert!(t.contains("ip_local_port_range=\"1024 65535\""), "{t}");
}

#[test]
fn skipped_program_runs_make_a_recording_incomplete() {
    let mut records = mysql_incident();
    let at_ns = START_NS + 4 * S;
    records.push(Record::Counters(crate::capture::Counters {
        at_ns,
        kernel_skipped_runs: 2,
        ..Default::default()
    }));
    let status = status_of(&records);
    let r = report_of(&[("incident.portx", records, status)]);
    assert!(!r.complete.ok);
    assert_eq!(r.complete.skipped_runs, 2);
    let line = text::completeness_line(&r.complete);
    assert!(
        line.contains("2 program runs skipped by the kernel"),
        "{line}"
    );
}

/// A socket whose close never reached portx (a new one connects from its kernel
/// address while the model still holds it) is said, and makes the recording
/// incomplete: its moves are missing.
#[test]
fn a_close_that_never_came_makes_a_recording_incomplete() {
    use crate::events::{Kind, TcpState::*};
    let mut records = mysql_incident();
    // The first client socket's address, connecting again: its close was lost.
    records.push(event(
        Kind::State,
        START_NS + 3 * S,
        CLIENT,
        0xffff_8880_0000_1000,
        ("127.0.0.1", 0),
        ("127.0.0.1", 9000),
        Some((Close, SynSent)),
        None,
    ));
    let status = status_of(&records);
    let r = report_of(&[("incident.portx", records, status)]);
    assert!(!r.complete.ok);
    assert_eq!(r.complete.closes_missed, 1);
    let line = text::completeness_line(&r.complete);
    assert!(line.contains("1 close that never reached portx"), "{line}");
}
