use super::*;
use torrentguard_protocol::HashAlgo;

const CS: u32 = 16 * 1024;

/// A tree manifest of `files` (path, bytes, mode) and `dirs`, and the bytes by path.
/// A source file: relative path, bytes, mode.
type Source = (&'static str, Vec<u8>, u32);

fn tree(files: &[Source], dirs: &[&str]) -> Arc<Manifest> {
    let mut entries: Vec<Entry> = files
        .iter()
        .map(|(p, d, mode)| Entry::file(*p, d.len() as u64, *mode))
        .chain(dirs.iter().map(|p| Entry::dir(*p, 0o755)))
        .collect();
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let chunks = entries
        .iter()
        .filter_map(|e| files.iter().find(|f| f.0 == e.path))
        .flat_map(|f| f.1.chunks(CS as usize))
        .map(|c| HashAlgo::Sha256.digest(c))
        .collect();
    let m = Manifest::tree("set", CS, HashAlgo::Sha256, entries, chunks);
    m.validate().unwrap();
    Arc::new(m)
}

fn sample() -> (Arc<Manifest>, Vec<Source>) {
    let files = vec![
        ("a.bin", (0..40_000u32).map(|i| i as u8).collect(), 0o644),
        ("d/x.sh", b"#!/bin/sh\necho hi\n".to_vec(), 0o755),
        ("d/empty", Vec::new(), 0o600),
        ("sub/deep/y", vec![9u8; 20_000], 0o640),
    ];
    let m = tree(&files, &["d", "sub", "sub/deep", "void"]);
    (m, files)
}

/// Every chunk's bytes, from the source files.
fn chunk_bytes(m: &Manifest, files: &[Source], i: u32) -> Vec<u8> {
    let p = m.place(i).unwrap();
    let path = &m.entries()[p.entry].path;
    let data = &files.iter().find(|f| f.0 == path).unwrap().1;
    data[p.offset as usize..p.offset as usize + p.len as usize].to_vec()
}

fn open(out: &Path, m: &Arc<Manifest>, only: &[String], force: bool) -> TreeOpened {
    let sel = Selection::only(only).unwrap();
    let keep = sel.entries(m, only).unwrap();
    let wanted = sel.wanted_chunks(m, &keep);
    TreeStore::open(out, m.clone(), keep, wanted, force).unwrap()
}

fn partial(o: TreeOpened) -> PartialTree {
    match o {
        TreeOpened::Partial(p) => *p,
        TreeOpened::Complete { path } => panic!("unexpectedly complete at {}", path.display()),
    }
}

fn fill(p: &mut PartialTree, m: &Manifest, files: &[Source]) {
    for i in p.wanted.iter_set().collect::<Vec<_>>() {
        if !p.have.get(i) {
            p.store
                .files
                .write_chunk(i, &chunk_bytes(m, files, i))
                .unwrap();
            p.have.set(i);
        }
    }
}

#[test]
fn a_tree_lands_whole_with_modes_and_empty_dirs() {
    let out = tempfile::tempdir().unwrap();
    let (m, files) = sample();
    let mut p = partial(open(out.path(), &m, &[], false));
    assert!(out.path().join(".set.part/void").is_dir());
    assert!(
        !out.path().join("set").exists(),
        "nothing at the destination before the end"
    );
    fill(&mut p, &m, &files);
    p.store.save_state(&p.have).unwrap();
    p.store.finish(false).unwrap();
    let dest = out.path().join("set");
    for (path, data, mode) in &files {
        let f = dest.join(path);
        assert_eq!(&fs::read(&f).unwrap(), data, "{path}");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            *mode
        );
    }
    assert!(dest.join("void").is_dir());
    assert!(!out.path().join(".set.part").exists());
    assert!(!out.path().join(".set.part.tgstate").exists());
    // Read back through the rebased files: the seeder serves from the final tree.
    let mut buf = vec![0u8; m.chunk_len(0) as usize];
    p.store.files.read_chunk(0, &mut buf).unwrap();
    assert!(m.chunk_matches(0, &buf));
}

#[test]
fn an_interrupted_tree_resumes_with_only_verified_chunks() {
    let out = tempfile::tempdir().unwrap();
    let (m, files) = sample();
    {
        let mut p = partial(open(out.path(), &m, &[], false));
        for i in [0, 1, 3] {
            p.store
                .files
                .write_chunk(i, &chunk_bytes(&m, &files, i))
                .unwrap();
            p.have.set(i);
        }
        p.store.save_state(&p.have).unwrap();
    }
    let listed = crate::torrent::store::list_partials(out.path());
    assert_eq!(listed.len(), 1, "status lists the partial tree");
    assert_eq!(listed[0].chunks_verified, 3);
    assert!(listed[0].part.ends_with(".set.part"));
    // Tamper with one claimed chunk on disk.
    let a = out.path().join(".set.part/a.bin");
    let f = OpenOptions::new().write(true).open(&a).unwrap();
    f.write_all_at(b"X", 5).unwrap();
    let mut p = partial(open(out.path(), &m, &[], false));
    assert_eq!(p.have.iter_set().collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(p.discarded, 1);
    fill(&mut p, &m, &files);
    p.store.finish(false).unwrap();
    assert_eq!(fs::read(out.path().join("set/a.bin")).unwrap(), files[0].1);
}

#[test]
fn only_fetches_and_creates_the_selection() {
    let out = tempfile::tempdir().unwrap();
    let (m, files) = sample();
    let only = vec!["sub".to_string(), "*.sh".to_string()];
    let mut p = partial(open(out.path(), &m, &only, false));
    let a_chunks = m.tree_layout().unwrap().span_of(0).unwrap();
    assert!(!p.wanted.get(a_chunks.first_chunk), "a.bin is not selected");
    fill(&mut p, &m, &files);
    p.store.finish(false).unwrap();
    let dest = out.path().join("set");
    assert!(dest.join("sub/deep/y").is_file());
    assert!(
        !dest.join("d/x.sh").exists(),
        "*.sh stays within one component"
    );
    assert!(!dest.join("a.bin").exists());
    assert!(!dest.join("void").exists());

    let sel = Selection::only(&["**/*.sh".to_string()]).unwrap();
    let keep = sel.entries(&m, &[]).unwrap();
    let kept: Vec<_> = m
        .entries()
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(e, _)| e.path.as_str())
        .collect();
    assert_eq!(kept, ["d", "d/x.sh"]);
    let none = Selection::only(&["nothing*".to_string()]).unwrap();
    assert!(matches!(
        none.entries(&m, &["nothing*".to_string()]),
        Err(SelectionError::NoMatch(_))
    ));
}

#[test]
fn an_existing_tree_is_complete_or_refused_without_force() {
    let out = tempfile::tempdir().unwrap();
    let (m, files) = sample();
    let mut p = partial(open(out.path(), &m, &[], false));
    fill(&mut p, &m, &files);
    p.store.finish(false).unwrap();
    drop(p);
    assert!(matches!(
        open(out.path(), &m, &[], false),
        TreeOpened::Complete { .. }
    ));

    let y = out.path().join("set/sub/deep/y");
    fs::set_permissions(&y, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&y, vec![1u8; 20_000]).unwrap();
    let sel = Selection::all();
    let keep = sel.entries(&m, &[]).unwrap();
    let wanted = sel.wanted_chunks(&m, &keep);
    let err = TreeStore::open(out.path(), m.clone(), keep, wanted, false)
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Exists { .. }), "{err}");
    assert!(
        !out.path().join(".set.part").exists(),
        "a refusal writes nothing"
    );

    let mut p = partial(open(out.path(), &m, &[], true));
    assert_eq!(
        p.from_existing,
        m.chunk_count() - 2,
        "y's two chunks differ"
    );
    fill(&mut p, &m, &files);
    p.store.finish(true).unwrap();
    assert_eq!(fs::read(&y).unwrap(), files[3].1);
    let leftovers: Vec<_> = fs::read_dir(out.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "the old tree is gone: {leftovers:?}");
}

#[test]
fn a_link_planted_in_the_part_tree_is_not_followed() {
    let out = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let (m, files) = sample();
    fs::create_dir_all(out.path().join(".set.part")).unwrap();
    let target = outside.path().join("victim");
    fs::write(&target, b"keep me").unwrap();
    std::os::unix::fs::symlink(&target, out.path().join(".set.part/a.bin")).unwrap();
    std::os::unix::fs::symlink(outside.path(), out.path().join(".set.part/sub")).unwrap();
    let mut p = partial(open(out.path(), &m, &[], false));
    fill(&mut p, &m, &files);
    p.store.finish(false).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"keep me");
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1);
    assert!(out.path().join("set/sub/deep/y").is_file());
}

#[test]
fn a_second_download_of_the_same_tree_is_refused_while_locked() {
    let out = tempfile::tempdir().unwrap();
    let (m, _) = sample();
    let _first = partial(open(out.path(), &m, &[], false));
    let sel = Selection::all();
    let keep = sel.entries(&m, &[]).unwrap();
    let wanted = sel.wanted_chunks(&m, &keep);
    let err = TreeStore::open(out.path(), m.clone(), keep, wanted, false)
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
}

#[test]
fn roots_of_a_scanned_share() {
    let root = TreeRoot::Listed(Arc::new(vec![
        PathBuf::from("/home/u/Pictures"),
        PathBuf::from("/home/u/Pictures/a.jpg"),
    ]));
    assert_eq!(
        root.path_of(1, "photos/a.jpg"),
        PathBuf::from("/home/u/Pictures/a.jpg")
    );
    let dir = TreeRoot::Dir(PathBuf::from("/out/.set.part"));
    assert_eq!(dir.path_of(7, "a/b"), PathBuf::from("/out/.set.part/a/b"));
}

#[test]
fn a_shared_file_that_changes_is_no_longer_read() {
    let src = tempfile::tempdir().unwrap();
    let (m, files) = sample();
    let mut sources = Vec::new();
    for e in m.entries() {
        let p = src.path().join(e.path.replace('/', "_"));
        match files.iter().find(|f| f.0 == e.path) {
            Some(f) => fs::write(&p, &f.1).unwrap(),
            None => fs::create_dir_all(&p).unwrap(),
        }
        sources.push(p);
    }
    let shared = TreeFiles::shared(m.clone(), TreeRoot::Listed(Arc::new(sources.clone()))).unwrap();
    let mut buf = vec![0u8; m.chunk_len(0) as usize];
    shared.read_chunk(0, &mut buf).unwrap();
    assert!(m.chunk_matches(0, &buf));
    // Same size, other bytes, a later modification time.
    let a = &sources[0];
    let later = fs::metadata(a).unwrap().modified().unwrap() + std::time::Duration::from_secs(5);
    fs::write(a, vec![0u8; files[0].1.len()]).unwrap();
    fs::File::options()
        .write(true)
        .open(a)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let err = shared.read_chunk(0, &mut buf).unwrap_err();
    let changed = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<FileChanged>())
        .unwrap();
    assert_eq!((changed.entry, &changed.path), (0, a));
    // The other files are still served.
    let last = m.chunk_count() - 1;
    let mut buf = vec![0u8; m.chunk_len(last) as usize];
    shared.read_chunk(last, &mut buf).unwrap();
}

/// A tree with more files than the open-file cache holds: the files written and then closed
/// by the cache are not forgotten by `sync` (it syncs their file system), and a sync leaves
/// nothing pending.
#[test]
fn files_closed_by_the_cache_before_a_sync_are_still_synced() {
    let names: Vec<String> = (0..OPEN_FILES + 6).map(|i| format!("f{i:03}")).collect();
    let files: Vec<Source> = names
        .iter()
        .map(|n| -> Source {
            (
                Box::leak(n.clone().into_boxed_str()),
                vec![n.len() as u8; 100],
                0o644,
            )
        })
        .collect();
    let m = tree(&files, &[]);
    let out = tempfile::tempdir().unwrap();
    let mut p = partial(open(out.path(), &m, &[], false));
    fill(&mut p, &m, &files);
    let pending = |p: &PartialTree| {
        let o = p.store.files.open.lock().unwrap();
        (o.written.len(), o.closed_unsynced.is_some())
    };
    let (open_written, closed) = pending(&p);
    assert!(
        closed,
        "a written file was closed by the cache before any sync"
    );
    assert!(open_written > 0 && open_written < files.len());
    p.store.save_state(&p.have).unwrap();
    assert_eq!(
        pending(&p),
        (0, false),
        "the sync covered every written file"
    );
    p.store.finish(false).unwrap();
    for (path, data, _) in &files {
        assert_eq!(&fs::read(out.path().join("set").join(path)).unwrap(), data);
    }
}
