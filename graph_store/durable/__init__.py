"""Durable files: the one implementation of every write this project makes crash-safe.

- :func:`atomic_file` / :func:`write_atomically`: a file is written under a hidden temporary name in
  its folder, fsynced, renamed over the target, and the folder is fsynced (without that, the rename
  itself may not survive a power loss and the old file comes back). A failure removes the temporary.
- :class:`VersionedFolder`: immutable version folders and a ``CURRENT`` file naming the live one. A new
  version is written into a hidden temporary folder, fsynced and renamed; only then is ``CURRENT``
  replaced (atomically). Old versions are pruned, temporaries a crash left are removed. Saves of one
  folder are serialised by a lock file.
- :class:`AppendLog`: a JSON-lines file shared by processes. Appends take an exclusive ``flock`` on a
  side file (the log itself is replaced when a version is saved, and a lock on it would go too), cut
  a torn last line a crashed writer left, write whole and fsync, or cut their own partial write off
  again. Readers take complete lines only, so a line being written waits for the next read.
- :class:`VersionLog`: the log of writes made since the live version of a :class:`VersionedFolder`
  (the graph store's journal, the knowledge bases' logs). Its header names the version it continues.
  A save writes the new version from memory, then, holding the log lock, makes it live and starts
  the new version's log with the lines appended after the point the new version covers ("carried"),
  so a write acknowledged while the save ran is never lost. A process holding an older version learns
  that the folder moved on (:class:`VersionMoved`) and reloads before it reads or writes again.

Why not SQLite (WAL): the logs are written by replicas on several nodes through the cluster's
shared volume (NFSv4, EFS, Filestore; cluster/). SQLite's WAL mode needs shared memory between its
clients and does not work over a network file system, and its rollback journal relies on POSIX
record locks that network file systems are known to break (sqlite.org, "SQLite Over a Network").
A log of fsynced appends under ``flock`` (NFSv4 implements it with leases) works on both a local disk
and the shared volume, so one implementation serves both.
"""

from graph_store.durable.files import (
    CURRENT,
    atomic_file,
    atomic_folder,
    durable_file,
    exclusive_lock,
    file_digest,
    fsync_dir,
    fsync_file,
    fsync_tree,
    recover_folder,
    temporary_name,
    write_atomically,
    write_file,
)
from graph_store.durable.folders import NewVersion, VersionedFolder
from graph_store.durable.logs import (
    AppendLog,
    Carry,
    VersionLog,
    VersionMoved,
    append_lines,
    append_to_live,
    end_of_complete_lines,
)

__all__ = [
    "CURRENT",
    "AppendLog",
    "Carry",
    "NewVersion",
    "VersionLog",
    "VersionMoved",
    "VersionedFolder",
    "append_lines",
    "append_to_live",
    "atomic_file",
    "atomic_folder",
    "durable_file",
    "end_of_complete_lines",
    "exclusive_lock",
    "file_digest",
    "fsync_dir",
    "fsync_file",
    "fsync_tree",
    "recover_folder",
    "temporary_name",
    "write_atomically",
    "write_file",
]
