//! One peer connection of a download: connect with the pinned fingerprint, exchange `Hello`s
//! and bitfields, keep a window of requests out, verify and write what arrives.

use super::*;

/// How long a chunk a peer answered `Busy` for is not asked of that peer again.
const BUSY_BACKOFF: Duration = Duration::from_secs(2);

/// Releases a peer's outstanding requests and availability however its task ends.
struct PeerGuard<'a> {
    sh: &'a Shared,
    inflight: Vec<(u32, Instant)>,
    has: Bitfield,
    counted: bool,
}

impl Drop for PeerGuard<'_> {
    fn drop(&mut self) {
        let mut p = self.sh.picker();
        for (i, _) in self.inflight.drain(..) {
            p.release(i);
        }
        if self.counted {
            p.remove_availability(&self.has);
        }
    }
}

/// Runs one peer connection until the download ends or the peer fails. Returns how it ended
/// and its penalty total.
pub(super) async fn run_peer(
    sh: Arc<Shared>,
    peer: PeerInfo,
    prior_penalty: u32,
) -> (PeerEnd, u32) {
    let mut penalty = prior_penalty;
    let end = peer_session(&sh, &peer, &mut penalty).await;
    let end = match end {
        Ok(e) => e,
        // `{:#}`: the whole chain, e.g. "connecting to 127.0.0.1:4000: Connection refused".
        Err(e) => PeerEnd::Failed(format!("{e:#}")),
    };
    let end = match end {
        PeerEnd::Failed(r) if penalty >= BAN_THRESHOLD => PeerEnd::Banned(r),
        other => other,
    };
    (end, penalty)
}

async fn peer_session(
    sh: &Arc<Shared>,
    peer: &PeerInfo,
    penalty: &mut u32,
) -> anyhow::Result<PeerEnd> {
    let addr = SocketAddr::new(peer.address, peer.port);
    let m = &sh.manifest;
    let n = m.chunk_count();
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(r) => r.map_err(|e| anyhow::anyhow!("connecting to {addr}: {e}"))?,
        Err(_) => anyhow::bail!("connecting to {addr}: no answer within {CONNECT_TIMEOUT:?}"),
    };
    let _ = tcp.set_nodelay(true);
    let config = peer_client_config(&sh.identity, peer.fingerprint)?;
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TlsConnector::from(Arc::new(config)).connect(
            peer_server_name(),
            // rustls asks the socket for at most 4 KiB at a time; a large read buffer below it
            // turns ~260 000 read syscalls per GiB into ~4 000.
            tokio::io::BufReader::with_capacity(SOCKET_READ_BUFFER, tcp),
        ),
    )
    .await?
    .map_err(|e| anyhow::anyhow!("TLS handshake with {addr} failed: {e}"))?;
    let (_, session) = tls.get_ref();
    let cipher = session
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    let group = session
        .negotiated_key_exchange_group()
        .map(|g| format!("{:?}", g.name()))
        .unwrap_or_default();
    tracing::debug!(peer = %addr, fingerprint = %peer.fingerprint, %cipher, %group, "connected to peer");
    sh.events.emit(Event::PeerConnected {
        file_id: sh.file_id,
        fingerprint: peer.fingerprint,
        address: addr,
        cipher,
        group,
    });

    let (rd, mut wr) = tokio::io::split(tls);
    let mut scratch = BytesMut::with_capacity(256);
    let own_have = sh.shared_file.have();
    write_frame(
        &mut wr,
        &Frame::Hello {
            version: PROTOCOL_VERSION,
            file_id: sh.file_id,
            chunk_count: n,
        },
        &mut scratch,
    )
    .await?;
    write_frame(
        &mut wr,
        &Frame::Bitfield(own_have.as_bytes().to_vec().into()),
        &mut scratch,
    )
    .await?;
    wr.flush().await?;

    // The reader runs in its own task (select! must never cut a read short); the small channel
    // bounds how many chunk buffers can be queued.
    let (tx, mut rx) = mpsc::channel::<Result<Incoming, WireError>>(2);
    let pool = sh.pool.clone();
    let bound = frame_bound(m.chunk_size, n);
    let reader_task = tokio::spawn(async move {
        let mut reader = FrameReader::new(rd);
        let mut hello_seen = false;
        loop {
            let r = reader.next(&pool).await;
            let stop = !matches!(r, Ok(Some(_)));
            if let Ok(Some(Incoming::Control(Frame::Hello { .. }))) = &r
                && !hello_seen
            {
                hello_seen = true;
                reader.set_max_frame(bound);
            }
            let msg = match r {
                Ok(Some(x)) => Ok(x),
                Ok(None) => Err(WireError::Truncated),
                Err(e) => Err(e),
            };
            if tx.send(msg).await.is_err() || stop {
                return;
            }
        }
    });
    struct Abort(tokio::task::AbortHandle);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _abort = Abort(reader_task.abort_handle());

    let expect = |msg: Option<Result<Incoming, WireError>>| -> anyhow::Result<Frame> {
        match msg {
            Some(Ok(Incoming::Control(f))) => Ok(f),
            Some(Ok(Incoming::Chunk { .. })) => anyhow::bail!("chunk before handshake"),
            Some(Err(e)) => Err(e.into()),
            None => anyhow::bail!("connection closed during handshake"),
        }
    };
    match expect(tokio::time::timeout(CONNECT_TIMEOUT, rx.recv()).await?)? {
        Frame::Hello {
            version,
            file_id,
            chunk_count,
        } if version == PROTOCOL_VERSION && file_id == sh.file_id && chunk_count == n => {}
        Frame::Bye { text, .. } => anyhow::bail!("peer refused: {text}"),
        other => anyhow::bail!("bad Hello from peer: {other:?}"),
    }
    let has = match expect(tokio::time::timeout(CONNECT_TIMEOUT, rx.recv()).await?)? {
        Frame::Bitfield(b) => Bitfield::from_bytes(&b, n)?,
        Frame::Bye { text, .. } => anyhow::bail!("peer refused: {text}"),
        other => anyhow::bail!("expected Bitfield, got {}", other.name()),
    };
    sh.picker().add_availability(&has);
    let mut g = PeerGuard {
        sh,
        inflight: Vec::new(),
        has,
        counted: true,
    };
    let mut cancelled: Vec<u32> = Vec::new();
    // Chunks this peer answered `Busy` for, not to be asked of it again until the instant given.
    let mut deferred: Vec<(u32, Instant)> = Vec::new();
    let mut verifying = FuturesOrdered::new();
    let mut completions = sh.completions.subscribe();
    let mut rate = SpeedMeter::new(0);
    let mut received = 0u64;
    let mut last_data = Instant::now();

    loop {
        // Keep the pipe full: enough requests out to cover ~250 ms at this peer's rate (a
        // shaped or distant link queues for tens of milliseconds).
        let bps = rate.update(received);
        sh.peer_rates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer.fingerprint, bps);
        let depth = ((bps / 4) / m.chunk_size.max(1) as u64 + 2).clamp(2, 32) as usize;
        // Deferrals that ran out make their chunks askable again, before picking.
        let now = Instant::now();
        deferred.retain(|(_, until)| *until > now);
        let mut wrote = false;
        while g.inflight.len() < depth {
            let (inflight, deferred) = (&g.inflight, &deferred);
            let pick = sh.picker().pick(&g.has, |i| {
                inflight.iter().any(|(x, _)| *x == i) || deferred.iter().any(|(x, _)| *x == i)
            });
            let Some(i) = pick else { break };
            g.inflight.push((i, Instant::now()));
            write_frame(&mut wr, &Frame::Request(i), &mut scratch).await?;
            wrote = true;
        }
        if wrote {
            wr.flush().await?;
        }
        if g.inflight.is_empty() && verifying.is_empty() && sh.picker().is_done() {
            let bye = Frame::Bye {
                reason: 0,
                text: "download complete".into(),
            };
            write_frame(&mut wr, &bye, &mut scratch).await.ok();
            wr.shutdown().await.ok();
            return Ok(PeerEnd::Finished);
        }
        let retry_deferred = deferred.iter().map(|(_, t)| *t).min();
        let stall_at = last_data + sh.stall_timeout;
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Ok(Incoming::Chunk { index, data })) => {
                    last_data = Instant::now();
                    if let Some(pos) = g.inflight.iter().position(|(i, _)| *i == index) {
                        g.inflight.swap_remove(pos);
                        received += data.len() as u64;
                        if verifying.len() >= VERIFY_DEPTH
                            && let Some(r) = verifying.next().await
                            && let Some(end) = settle(sh, r, penalty, peer.fingerprint)
                        {
                            return Ok(end);
                        }
                        verifying.push_back(verify_and_write(sh, index, data));
                    } else if let Some(pos) = cancelled.iter().position(|i| *i == index) {
                        cancelled.swap_remove(pos);
                        sh.pool.give(data);
                    } else {
                        *penalty += 1;
                        anyhow::bail!("peer sent chunk {index}, which was not requested");
                    }
                }
                Some(Ok(Incoming::Control(f))) => match f {
                    Frame::Have(i) if i < n => {
                        if !g.has.get(i) {
                            g.has.set(i);
                            sh.picker().add_have(i);
                        }
                    }
                    Frame::Reject { index, reason } => {
                        if let Some(pos) = g.inflight.iter().position(|(i, _)| *i == index) {
                            g.inflight.swap_remove(pos);
                            sh.picker().release(index);
                            match reason {
                                RejectReason::NotHeld => {
                                    g.has.clear(index);
                                    sh.retries.fetch_add(1, Ordering::Relaxed);
                                }
                                // The seeder just gave this chunk to another downloader, who
                                // will pass it on: ask someone else, or this peer again later.
                                RejectReason::Busy => deferred.push((index, Instant::now() + BUSY_BACKOFF)),
                                RejectReason::Invalid => {
                                    sh.retries.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        cancelled.retain(|i| *i != index);
                    }
                    Frame::Bye { text, .. } => return Ok(PeerEnd::Failed(format!("peer closed: {text}"))),
                    other => {
                        *penalty += 1;
                        anyhow::bail!("unexpected {} frame", other.name());
                    }
                },
                // A peer killed mid-session: rustls reports the missing close_notify with a
                // link to its manual; the user needs only to know the connection dropped.
                Some(Err(WireError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    anyhow::bail!("connection dropped by the peer (no orderly close)")
                }
                Some(Err(e)) => anyhow::bail!("{e}"),
                None => anyhow::bail!("connection closed"),
            },
            Some(r) = verifying.next(), if !verifying.is_empty() => {
                if let Some(end) = settle(sh, r, penalty, peer.fingerprint) {
                    return Ok(end);
                }
            }
            c = completions.recv() => {
                if let Ok(i) = c
                    && let Some(pos) = g.inflight.iter().position(|(x, _)| *x == i)
                {
                    // Another peer delivered it first (end game): cancel ours.
                    g.inflight.swap_remove(pos);
                    cancelled.push(i);
                    write_frame(&mut wr, &Frame::Cancel(i), &mut scratch).await?;
                    wr.flush().await?;
                }
            }
            // A deferral runs out: loop round to ask for those chunks again.
            _ = tokio::time::sleep_until(retry_deferred.unwrap_or(now).into()), if retry_deferred.is_some() => {}
            _ = tokio::time::sleep_until(stall_at.into()), if !g.inflight.is_empty() => {
                *penalty += STALL_PENALTY;
                for (i, _) in &g.inflight {
                    sh.events.emit(Event::ChunkRetry { file_id: sh.file_id, index: *i, fingerprint: peer.fingerprint, reason: "peer stalled".into() });
                }
                sh.retries.fetch_add(g.inflight.len() as u32, Ordering::Relaxed);
                return Ok(PeerEnd::Failed(format!("stalled: no data for {:?}", sh.stall_timeout)));
            }
            _ = sh.cancel.cancelled() => {
                write_frame(&mut wr, &Frame::Bye { reason: 0, text: "done".into() }, &mut scratch).await.ok();
                wr.shutdown().await.ok();
                return Ok(PeerEnd::Finished);
            }
        }
    }
}

type Verified = (u32, Result<bool, std::io::Error>);

/// Hashes chunk `index` on the blocking pool and writes it if it matches.
fn verify_and_write(
    sh: &Arc<Shared>,
    index: u32,
    data: Vec<u8>,
) -> tokio::task::JoinHandle<Verified> {
    let sh = sh.clone();
    tokio::task::spawn_blocking(move || {
        let m = &sh.manifest;
        let ok = m.chunk_matches(index, &data);
        let r = if ok {
            sh.store.write_chunk(index, &data).map(|_| true)
        } else {
            Ok(false)
        };
        sh.pool.give(data);
        if matches!(r, Ok(true)) {
            // Verified and on disk: the in-order hasher reads it back from the file, so the
            // whole-file digest covers the bytes that will be renamed into place. Nothing to do
            // if it is gone (the download is ending).
            let _ = sh.hasher.send(index);
        }
        (index, r)
    })
}

/// Applies a verification result. Returns how the peer ends, if it must.
fn settle(
    sh: &Shared,
    r: Result<Verified, tokio::task::JoinError>,
    penalty: &mut u32,
    fp: Fingerprint,
) -> Option<PeerEnd> {
    let (index, r) = match r {
        Ok(x) => x,
        Err(e) => return Some(PeerEnd::Failed(format!("verification task failed: {e}"))),
    };
    match r {
        Ok(true) => {
            let new = sh.picker().complete(index);
            if new {
                sh.shared_file.add_chunk(index);
                let _ = sh.completions.send(index);
                sh.chunks_fetched.fetch_add(1, Ordering::Relaxed);
                let len = sh.manifest.chunk_len(index) as u64;
                sh.bytes_done.fetch_add(len, Ordering::Relaxed);
                sh.bytes_fetched.fetch_add(len, Ordering::Relaxed);
                sh.dirty.store(true, Ordering::Relaxed);
                if sh.picker().is_done() {
                    sh.done.notify_one();
                }
            }
            None
        }
        Ok(false) => {
            sh.picker().release(index);
            sh.retries.fetch_add(1, Ordering::Relaxed);
            *penalty += BAD_CHUNK_PENALTY;
            tracing::warn!(peer = %fp, index, "chunk failed verification; discarded, will be fetched again");
            sh.events.emit(Event::ChunkRetry {
                file_id: sh.file_id,
                index,
                fingerprint: fp,
                reason: "digest mismatch".into(),
            });
            (*penalty >= BAN_THRESHOLD).then(|| {
                PeerEnd::Banned(format!(
                    "sent chunks that fail verification (chunk {index})"
                ))
            })
        }
        Err(e) => {
            sh.picker().release(index);
            tracing::error!(error = %e, index, "writing a verified chunk failed");
            *sh.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            sh.done.notify_one();
            Some(PeerEnd::Fatal)
        }
    }
}
