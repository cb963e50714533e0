//! Writing a session description: byte for byte what `sdp_types::Session::write` writes, but
//! straight into a `Vec<u8>`. The crate's writer goes through `core::fmt` for every field
//! (`write!` per line, a `Display` wrapper per text field, one character at a time); on a
//! relay that writes a body per hop and call that was about 14,000 instructions per body
//! (callgrind, `examples/sip_cpu.rs`), this one needs under 3,000.
//!
//! Every struct of the data model is destructured without `..`, so a field added by a new
//! version of the crate fails the build here instead of being left out silently. The test
//! `write_matches_sdp_types` in `tests.rs` compares both writers on arbitrary sessions.

#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sdp_types::{Attribute, Bandwidth, Connection, Key, Media, Origin, Repeat, Session, Time, TimeZone};

/// Appends `session` to `out` as `sdp_types::Session::write` would.
pub(crate) fn session(out: &mut Vec<u8>, session: &Session) {
    let Session {
        origin,
        session_name,
        session_description,
        uri,
        emails,
        phones,
        connection,
        bandwidths,
        times,
        time_zones,
        key,
        attributes,
        medias,
    } = session;
    out.extend_from_slice(b"v=0\r\n");
    write_origin(out, origin);
    line(out, b"s=", session_name);
    if let Some(session_description) = session_description {
        line(out, b"i=", session_description);
    }
    if let Some(uri) = uri {
        line(out, b"u=", uri);
    }
    for email in emails {
        line(out, b"e=", email);
    }
    for phone in phones {
        line(out, b"p=", phone);
    }
    if let Some(connection) = connection {
        write_connection(out, connection);
    }
    for bandwidth in bandwidths {
        write_bandwidth(out, bandwidth);
    }
    if times.is_empty() {
        out.extend_from_slice(b"t=0 0\r\n");
    }
    for time in times {
        write_time(out, time);
    }
    if !time_zones.is_empty() {
        write_time_zones(out, time_zones);
    }
    if let Some(key) = key {
        write_key(out, key);
    }
    for attribute in attributes {
        write_attribute(out, attribute);
    }
    for media in medias {
        write_media(out, media);
    }
}

fn write_origin(out: &mut Vec<u8>, origin: &Origin) {
    let Origin {
        username,
        sess_id,
        sess_version,
        nettype,
        addrtype,
        unicast_address,
    } = origin;
    out.extend_from_slice(b"o=");
    match username {
        Some(username) if !username.is_empty() => text(out, username),
        _ => out.push(b'-'),
    }
    out.push(b' ');
    text(out, sess_id);
    out.push(b' ');
    number(out, *sess_version);
    out.push(b' ');
    text(out, nettype.as_str());
    out.push(b' ');
    text(out, addrtype.as_str());
    out.push(b' ');
    text(out, unicast_address);
    out.extend_from_slice(b"\r\n");
}

fn write_connection(out: &mut Vec<u8>, connection: &Connection) {
    let Connection {
        nettype,
        addrtype,
        connection_address,
    } = connection;
    out.extend_from_slice(b"c=");
    text(out, nettype.as_str());
    out.push(b' ');
    text(out, addrtype.as_str());
    out.push(b' ');
    text(out, connection_address);
    out.extend_from_slice(b"\r\n");
}

fn write_bandwidth(out: &mut Vec<u8>, bandwidth: &Bandwidth) {
    let Bandwidth { bwtype, bandwidth } = bandwidth;
    out.extend_from_slice(b"b=");
    text(out, bwtype);
    out.push(b':');
    number(out, *bandwidth);
    out.extend_from_slice(b"\r\n");
}

fn write_time(out: &mut Vec<u8>, time: &Time) {
    let Time {
        start_time,
        stop_time,
        repeats,
    } = time;
    out.extend_from_slice(b"t=");
    number(out, *start_time);
    out.push(b' ');
    number(out, *stop_time);
    out.extend_from_slice(b"\r\n");
    for repeat in repeats {
        write_repeat(out, repeat);
    }
}

fn write_repeat(out: &mut Vec<u8>, repeat: &Repeat) {
    let Repeat {
        repeat_interval,
        active_duration,
        offsets,
    } = repeat;
    out.extend_from_slice(b"r=");
    typed_time(out, *repeat_interval);
    out.push(b' ');
    typed_time(out, *active_duration);
    for offset in offsets {
        out.push(b' ');
        typed_time(out, *offset);
    }
    out.extend_from_slice(b"\r\n");
}

fn write_time_zones(out: &mut Vec<u8>, zones: &[TimeZone]) {
    out.extend_from_slice(b"z=");
    for (at, zone) in zones.iter().enumerate() {
        let TimeZone {
            adjustment_time,
            offset,
        } = zone;
        if at > 0 {
            out.push(b' ');
        }
        number(out, *adjustment_time);
        out.push(b' ');
        if *offset < 0 {
            out.push(b'-');
        }
        typed_time(out, offset.unsigned_abs());
    }
    out.extend_from_slice(b"\r\n");
}

fn write_key(out: &mut Vec<u8>, key: &Key) {
    let Key { method, encryption_key } = key;
    out.extend_from_slice(b"k=");
    text(out, method);
    if let Some(encryption_key) = encryption_key {
        out.push(b':');
        text(out, encryption_key);
    }
    out.extend_from_slice(b"\r\n");
}

fn write_attribute(out: &mut Vec<u8>, attribute: &Attribute) {
    let Attribute { attribute, value } = attribute;
    out.extend_from_slice(b"a=");
    text(out, attribute);
    if let Some(value) = value {
        out.push(b':');
        text(out, value);
    }
    out.extend_from_slice(b"\r\n");
}

fn write_media(out: &mut Vec<u8>, media: &Media) {
    let Media {
        media,
        port,
        num_ports,
        proto,
        fmt,
        media_title,
        connections,
        bandwidths,
        key,
        attributes,
    } = media;
    out.extend_from_slice(b"m=");
    text(out, media);
    out.push(b' ');
    number(out, u64::from(*port));
    if let Some(num_ports) = num_ports {
        out.push(b'/');
        number(out, u64::from(*num_ports));
    }
    out.push(b' ');
    text(out, proto);
    out.push(b' ');
    text(out, fmt);
    out.extend_from_slice(b"\r\n");
    if let Some(media_title) = media_title {
        line(out, b"i=", media_title);
    }
    for connection in connections {
        write_connection(out, connection);
    }
    for bandwidth in bandwidths {
        write_bandwidth(out, bandwidth);
    }
    if let Some(key) = key {
        write_key(out, key);
    }
    for attribute in attributes {
        write_attribute(out, attribute);
    }
}

/// `<prefix><value>` and the line end.
fn line(out: &mut Vec<u8>, prefix: &[u8], value: &str) {
    out.extend_from_slice(prefix);
    text(out, value);
    out.extend_from_slice(b"\r\n");
}

/// A text field without its NUL, CR and LF characters (the crate strips them so that a value
/// cannot inject lines; all three are ASCII, so dropping bytes keeps the UTF-8 intact).
fn text(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    // Fields are short: a plain scan beats memchr's set-up (`fold`, not `any`, so that long
    // values vectorise).
    let clean = !bytes
        .iter()
        .fold(false, |found, &byte| found | matches!(byte, 0 | b'\r' | b'\n'));
    if clean {
        out.extend_from_slice(bytes);
        return;
    }
    for part in bytes.split(|&byte| matches!(byte, 0 | b'\r' | b'\n')) {
        out.extend_from_slice(part);
    }
}

/// A decimal number.
pub(crate) fn number(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// A repeat or time zone duration in the largest whole unit (`7d`, `1h`, `90m`, `45`), as
/// RFC 8866 section 5.10 allows and the crate writes.
fn typed_time(out: &mut Vec<u8>, seconds: u64) {
    let (value, unit) = match seconds {
        0 => (0, None),
        _ if seconds % 86_400 == 0 => (seconds / 86_400, Some(b'd')),
        _ if seconds % 3_600 == 0 => (seconds / 3_600, Some(b'h')),
        _ if seconds % 60 == 0 => (seconds / 60, Some(b'm')),
        _ => (seconds, None),
    };
    number(out, value);
    if let Some(unit) = unit {
        out.push(unit);
    }
}
