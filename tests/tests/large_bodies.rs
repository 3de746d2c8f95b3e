//! 200 MiB in each direction, streamed: the gateway's memory must stay flat.

use std::{
    io::{Read, Write},
    time::Duration,
};

use gateway_tests::{
    Backend, Gateway,
    backend::{CHECKSUM_SEED, body_byte, checksum},
    client,
};

const SIZE: u64 = 200 * 1024 * 1024;
const RSS_LIMIT: u64 = 64 * 1024 * 1024;

fn gateway(backend: &Backend) -> Gateway {
    Gateway::start(&format!(
        "[gateway]\nworkers = 1\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
        backend.addr
    ))
}

#[test]
fn chunked_upload_and_download_of_200_mib_stream_in_bounded_memory() {
    let backend = Backend::start("sink");
    let gw = gateway(&backend);

    // Upload: chunked, 64 KiB chunks, with a checksum to prove every byte arrived.
    let mut stream = client::connect(gw.addr());
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .expect("head");
    let mut block = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    let mut hash = CHECKSUM_SEED;
    while sent < SIZE {
        for (i, b) in block.iter_mut().enumerate() {
            *b = body_byte(sent + i as u64);
        }
        hash = checksum(hash, &block);
        stream
            .write_all(format!("{:x}\r\n", block.len()).as_bytes())
            .expect("chunk size");
        stream.write_all(&block).expect("chunk data");
        stream.write_all(b"\r\n").expect("chunk end");
        sent += block.len() as u64;
    }
    stream.write_all(b"0\r\n\r\n").expect("last chunk");
    let res = client::read_response(&mut stream, false);
    assert_eq!(res.status, 200, "{}", res.text());
    let echo = res.json();
    assert_eq!(echo["body_len"].as_u64(), Some(SIZE));
    assert_eq!(
        echo["body_checksum"].as_str(),
        Some(format!("{hash:016x}").as_str())
    );

    // Download: chunked from the backend, streamed and verified without buffering.
    stream
        .write_all(format!("GET /chunked/{SIZE} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .expect("request");
    let received = read_chunked_counting(&mut stream);
    assert_eq!(received, SIZE);

    let peak = gw.peak_rss();
    assert!(
        peak < RSS_LIMIT,
        "gateway peak RSS {} MiB over the 64 MiB bound",
        peak / (1024 * 1024)
    );
}

#[test]
fn content_length_download_of_200_mib_streams() {
    let backend = Backend::start("source");
    let gw = gateway(&backend);
    let mut stream = client::connect(gw.addr());
    stream
        .write_all(format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .expect("request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("head byte");
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).contains(&format!("content-length: {SIZE}")));
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    while total < SIZE {
        let n = stream.read(&mut buf).expect("body");
        assert!(n > 0, "closed after {total} bytes");
        assert!(
            buf[..n]
                .iter()
                .enumerate()
                .all(|(i, &b)| b == body_byte(total + i as u64)),
            "corrupted at {total}"
        );
        total += n as u64;
    }
    assert_eq!(total, SIZE);
    assert!(
        gw.peak_rss() < RSS_LIMIT,
        "peak RSS {} MiB",
        gw.peak_rss() >> 20
    );
}

/// Reads one chunked response, verifying the body pattern; returns its length.
fn read_chunked_counting(stream: &mut std::net::TcpStream) -> u64 {
    let mut reader = std::io::BufReader::with_capacity(1 << 20, stream);
    let mut line = String::new();
    let read_line = |reader: &mut std::io::BufReader<&mut std::net::TcpStream>,
                     line: &mut String| {
        line.clear();
        let mut bytes = Vec::new();
        std::io::BufRead::read_until(reader, b'\n', &mut bytes).expect("line");
        line.push_str(&String::from_utf8_lossy(&bytes));
    };
    loop {
        read_line(&mut reader, &mut line);
        if line == "\r\n" {
            break;
        }
        assert!(
            line.starts_with("HTTP/1.1 200") || line.contains(':'),
            "unexpected head line {line:?}"
        );
    }
    let mut total = 0u64;
    let mut data = Vec::new();
    loop {
        read_line(&mut reader, &mut line);
        let size = u64::from_str_radix(line.trim_end(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {line:?}"));
        if size == 0 {
            read_line(&mut reader, &mut line);
            assert_eq!(line, "\r\n");
            return total;
        }
        data.resize(size as usize + 2, 0);
        reader.read_exact(&mut data).expect("chunk");
        assert!(
            data[..size as usize]
                .iter()
                .enumerate()
                .all(|(i, &b)| b == body_byte(total + i as u64)),
            "corrupted at {total}"
        );
        assert_eq!(&data[size as usize..], b"\r\n");
        total += size;
    }
}
