"""The protobuf messages we use, transcribed from CRIU's own .proto files.

Source: checkpoint-restore/criu at tag v4.2 (rpc.proto and stats.proto are
unchanged since v4.1.1), files images/rpc.proto, images/inventory.proto,
images/core.proto (task_kobj_ids_entry), images/stats.proto and
images/pagemap.proto. Field numbers, labels, types and defaults are copied
from there; keep the comments naming the file when adding fields. Names are
the proto names, so a decoded dict reads like `crit decode` output.

Format changes we handle: CRIU 4.2 moved pagemap_entry's page count from
field 2 (uint32, renamed compat_nr_pages, written as 0) to field 5
(uint64 nr_pages); images.py applies CRIU's rule (use field 5 when present,
else field 2), so images from 4.1 and 4.2 both read right. Protobuf
decoders that predate 4.2 (Debian 12's crit 3.17 included) silently read a
4.2 pagemap's page counts as 0.
"""

from __future__ import annotations

from .wire import Enum, Field, Message

__all__ = [
    "CRIU_REQ_TYPE",
    "CRIU_CG_MODE",
    "CRIU_NETWORK_LOCK_METHOD",
    "CRIU_PRE_DUMP_MODE",
    "LSMTYPE",
    "CRIU_PAGE_SERVER_INFO",
    "CRIU_VETH_PAIR",
    "EXT_MOUNT_MAP",
    "JOIN_NAMESPACE",
    "INHERIT_FD",
    "CGROUP_ROOT",
    "UNIX_SK",
    "CRIU_OPTS",
    "CRIU_DUMP_RESP",
    "CRIU_RESTORE_RESP",
    "CRIU_NOTIFY",
    "CRIU_FEATURES",
    "CRIU_VERSION",
    "CRIU_REQ",
    "CRIU_RESP",
    "TASK_KOBJ_IDS_ENTRY",
    "PLUGINS_ENTRY",
    "INVENTORY_ENTRY",
    "DUMP_STATS_ENTRY",
    "RESTORE_STATS_ENTRY",
    "STATS_ENTRY",
    "PAGEMAP_HEAD",
    "PAGEMAP_ENTRY",
]


def _opt(number: int, name: str, type: str, **kw: object) -> Field:
    return Field(number, name, type, "optional", **kw)  # type: ignore[arg-type]


def _req(number: int, name: str, type: str, **kw: object) -> Field:
    return Field(number, name, type, "required", **kw)  # type: ignore[arg-type]


def _rep(number: int, name: str, type: str, **kw: object) -> Field:
    return Field(number, name, type, "repeated", **kw)  # type: ignore[arg-type]


# --- images/rpc.proto: enums ----------------------------------------------------

CRIU_REQ_TYPE = Enum(
    "criu_req_type",
    {
        "EMPTY": 0,
        "DUMP": 1,
        "RESTORE": 2,
        "CHECK": 3,
        "PRE_DUMP": 4,
        "PAGE_SERVER": 5,
        "NOTIFY": 6,
        "CPUINFO_DUMP": 7,
        "CPUINFO_CHECK": 8,
        "FEATURE_CHECK": 9,
        "VERSION": 10,
        "WAIT_PID": 11,
        "PAGE_SERVER_CHLD": 12,
        "SINGLE_PRE_DUMP": 13,
    },
)

CRIU_CG_MODE = Enum(
    "criu_cg_mode",
    {"IGNORE": 0, "CG_NONE": 1, "PROPS": 2, "SOFT": 3, "FULL": 4, "STRICT": 5, "DEFAULT": 6},
)

CRIU_NETWORK_LOCK_METHOD = Enum("criu_network_lock_method", {"IPTABLES": 1, "NFTABLES": 2, "SKIP": 3})

CRIU_PRE_DUMP_MODE = Enum("criu_pre_dump_mode", {"SPLICE": 1, "VM_READ": 2})

# images/inventory.proto
LSMTYPE = Enum("lsmtype", {"NO_LSM": 0, "SELINUX": 1, "APPARMOR": 2})


# --- images/rpc.proto: small messages ---------------------------------------------

CRIU_PAGE_SERVER_INFO = Message(
    "criu_page_server_info",
    [
        _opt(1, "address", "string"),
        _opt(2, "port", "int32"),
        _opt(3, "pid", "int32"),
        _opt(4, "fd", "int32"),
    ],
)

CRIU_VETH_PAIR = Message("criu_veth_pair", [_req(1, "if_in", "string"), _req(2, "if_out", "string")])

EXT_MOUNT_MAP = Message("ext_mount_map", [_req(1, "key", "string"), _req(2, "val", "string")])

JOIN_NAMESPACE = Message(
    "join_namespace",
    [_req(1, "ns", "string"), _req(2, "ns_file", "string"), _opt(3, "extra_opt", "string")],
)

INHERIT_FD = Message("inherit_fd", [_req(1, "key", "string"), _req(2, "fd", "int32")])

CGROUP_ROOT = Message("cgroup_root", [_opt(1, "ctrl", "string"), _req(2, "path", "string")])

UNIX_SK = Message("unix_sk", [_req(1, "inode", "uint32")])


# --- images/rpc.proto: criu_opts (all fields of v4.1.1) -----------------------------

CRIU_OPTS = Message(
    "criu_opts",
    [
        _req(1, "images_dir_fd", "int32", default=-1),
        _opt(68, "images_dir", "string"),  # used only if images_dir_fd == -1
        _opt(2, "pid", "int32"),  # if not set on dump, CRIU dumps the requesting process
        _opt(3, "leave_running", "bool"),
        _opt(4, "ext_unix_sk", "bool"),
        _opt(5, "tcp_established", "bool"),
        _opt(6, "evasive_devices", "bool"),
        _opt(7, "shell_job", "bool"),
        _opt(8, "file_locks", "bool"),
        _opt(9, "log_level", "int32", default=2),
        _opt(10, "log_file", "string"),  # no subdirs: relative to the work dir
        _opt(11, "ps", "message", message=CRIU_PAGE_SERVER_INFO),
        _opt(12, "notify_scripts", "bool"),
        _opt(13, "root", "string"),
        _opt(14, "parent_img", "string"),
        _opt(15, "track_mem", "bool"),
        _opt(16, "auto_dedup", "bool"),
        _opt(17, "work_dir_fd", "int32"),
        _opt(18, "link_remap", "bool"),
        _rep(19, "veths", "message", message=CRIU_VETH_PAIR),  # deprecated: use external
        _opt(20, "cpu_cap", "uint32", default=0xFFFFFFFF),
        _opt(21, "force_irmap", "bool"),
        _rep(22, "exec_cmd", "string"),
        _rep(23, "ext_mnt", "message", message=EXT_MOUNT_MAP),  # deprecated: use external
        _opt(24, "manage_cgroups", "bool"),  # backward compatibility
        _rep(25, "cg_root", "message", message=CGROUP_ROOT),
        _opt(26, "rst_sibling", "bool"),  # swrk only
        _rep(27, "inherit_fd", "message", message=INHERIT_FD),  # swrk only
        _opt(28, "auto_ext_mnt", "bool"),
        _opt(29, "ext_sharing", "bool"),
        _opt(30, "ext_masters", "bool"),
        _rep(31, "skip_mnt", "string"),
        _rep(32, "enable_fs", "string"),
        _rep(33, "unix_sk_ino", "message", message=UNIX_SK),  # deprecated: use external
        _opt(34, "manage_cgroups_mode", "enum", enum=CRIU_CG_MODE),
        _opt(35, "ghost_limit", "uint32", default=0x100000),
        _rep(36, "irmap_scan_paths", "string"),
        _rep(37, "external", "string"),
        _opt(38, "empty_ns", "uint32"),
        _rep(39, "join_ns", "message", message=JOIN_NAMESPACE),
        _opt(41, "cgroup_props", "string"),
        _opt(42, "cgroup_props_file", "string"),
        _rep(43, "cgroup_dump_controller", "string"),
        _opt(44, "freeze_cgroup", "string"),
        _opt(45, "timeout", "uint32"),
        _opt(46, "tcp_skip_in_flight", "bool"),
        _opt(47, "weak_sysctls", "bool"),
        _opt(48, "lazy_pages", "bool"),
        _opt(49, "status_fd", "int32"),
        _opt(50, "orphan_pts_master", "bool"),
        _opt(51, "config_file", "string"),
        _opt(52, "tcp_close", "bool"),
        _opt(53, "lsm_profile", "string"),
        _opt(54, "tls_cacert", "string"),
        _opt(55, "tls_cacrl", "string"),
        _opt(56, "tls_cert", "string"),
        _opt(57, "tls_key", "string"),
        _opt(58, "tls", "bool"),
        _opt(59, "tls_no_cn_verify", "bool"),
        _opt(60, "cgroup_yard", "string"),
        _opt(61, "pre_dump_mode", "enum", enum=CRIU_PRE_DUMP_MODE, default=1),
        _opt(62, "pidfd_store_sk", "int32"),
        _opt(63, "lsm_mount_context", "string"),
        _opt(64, "network_lock", "enum", enum=CRIU_NETWORK_LOCK_METHOD, default=1),
        _opt(65, "mntns_compat_mode", "bool"),
        _opt(66, "skip_file_rwx_check", "bool"),
        _opt(67, "unprivileged", "bool"),
        _opt(69, "leave_stopped", "bool"),
        _opt(70, "display_stats", "bool"),
        _opt(71, "log_to_stderr", "bool"),
    ],
)


# --- images/rpc.proto: responses, notify, features, version, request --------------

CRIU_DUMP_RESP = Message("criu_dump_resp", [_opt(1, "restored", "bool")])

CRIU_RESTORE_RESP = Message("criu_restore_resp", [_req(1, "pid", "int32")])

CRIU_NOTIFY = Message("criu_notify", [_opt(1, "script", "string"), _opt(2, "pid", "int32")])

CRIU_FEATURES = Message(
    "criu_features",
    [_opt(1, "mem_track", "bool"), _opt(2, "lazy_pages", "bool"), _opt(3, "pidfd_store", "bool")],
)

CRIU_VERSION = Message(
    "criu_version",
    [
        _req(1, "major_number", "int32"),
        _req(2, "minor_number", "int32"),
        _opt(3, "gitid", "string"),
        _opt(4, "sublevel", "int32"),
        _opt(5, "extra", "int32"),
        _opt(6, "name", "string"),
    ],
)

CRIU_REQ = Message(
    "criu_req",
    [
        _req(1, "type", "enum", enum=CRIU_REQ_TYPE),
        _opt(2, "opts", "message", message=CRIU_OPTS),
        _opt(3, "notify_success", "bool"),
        _opt(4, "keep_open", "bool"),
        _opt(5, "features", "message", message=CRIU_FEATURES),
        _opt(6, "pid", "uint32"),  # for WAIT_PID
    ],
)

CRIU_RESP = Message(
    "criu_resp",
    [
        _req(1, "type", "enum", enum=CRIU_REQ_TYPE),
        _req(2, "success", "bool"),
        _opt(3, "dump", "message", message=CRIU_DUMP_RESP),
        _opt(4, "restore", "message", message=CRIU_RESTORE_RESP),
        _opt(5, "notify", "message", message=CRIU_NOTIFY),
        _opt(6, "ps", "message", message=CRIU_PAGE_SERVER_INFO),
        _opt(7, "cr_errno", "int32"),
        _opt(8, "features", "message", message=CRIU_FEATURES),
        _opt(9, "cr_errmsg", "string"),
        _opt(10, "version", "message", message=CRIU_VERSION),
        _opt(11, "status", "int32"),
    ],
)


# --- images/core.proto, images/inventory.proto ------------------------------------

TASK_KOBJ_IDS_ENTRY = Message(
    "task_kobj_ids_entry",
    [
        _req(1, "vm_id", "uint32"),
        _req(2, "files_id", "uint32"),
        _req(3, "fs_id", "uint32"),
        _req(4, "sighand_id", "uint32"),
        _opt(5, "pid_ns_id", "uint32"),
        _opt(6, "net_ns_id", "uint32"),
        _opt(7, "ipc_ns_id", "uint32"),
        _opt(8, "uts_ns_id", "uint32"),
        _opt(9, "mnt_ns_id", "uint32"),
        _opt(10, "user_ns_id", "uint32"),
        _opt(11, "cgroup_ns_id", "uint32"),
        _opt(12, "time_ns_id", "uint32"),
    ],
)

PLUGINS_ENTRY = Message("plugins_entry", [_rep(12, "plugins", "string")])

INVENTORY_ENTRY = Message(
    "inventory_entry",
    [
        _req(1, "img_version", "uint32"),
        _opt(2, "fdinfo_per_id", "bool"),
        _opt(3, "root_ids", "message", message=TASK_KOBJ_IDS_ENTRY),
        _opt(4, "ns_per_id", "bool"),
        _opt(5, "root_cg_set", "uint32"),
        _opt(6, "lsmtype", "enum", enum=LSMTYPE),
        _opt(8, "dump_uptime", "uint64"),
        _opt(9, "pre_dump_mode", "uint32"),
        _opt(10, "tcp_close", "bool"),
        _opt(11, "network_lock_method", "uint32"),
        _opt(12, "plugins_entry", "message", message=PLUGINS_ENTRY),
        _opt(13, "dump_criu_run_id", "string"),
        _opt(14, "allow_uprobes", "bool"),  # v4.2
    ],
)


# --- images/stats.proto -------------------------------------------------------------

DUMP_STATS_ENTRY = Message(
    "dump_stats_entry",
    [
        _req(1, "freezing_time", "uint32"),
        _req(2, "frozen_time", "uint32"),
        _req(3, "memdump_time", "uint32"),
        _req(4, "memwrite_time", "uint32"),
        _req(5, "pages_scanned", "uint64"),
        _req(6, "pages_skipped_parent", "uint64"),
        _req(7, "pages_written", "uint64"),
        _opt(8, "irmap_resolve", "uint32"),
        _req(9, "pages_lazy", "uint64"),
        _opt(10, "page_pipes", "uint64"),
        _opt(11, "page_pipe_bufs", "uint64"),
        _opt(12, "shpages_scanned", "uint64"),
        _opt(13, "shpages_skipped_parent", "uint64"),
        _opt(14, "shpages_written", "uint64"),
    ],
)

RESTORE_STATS_ENTRY = Message(
    "restore_stats_entry",
    [
        _req(1, "pages_compared", "uint64"),
        _req(2, "pages_skipped_cow", "uint64"),
        _req(3, "forking_time", "uint32"),
        _req(4, "restore_time", "uint32"),
        _opt(5, "pages_restored", "uint64"),
    ],
)

STATS_ENTRY = Message(
    "stats_entry",
    [
        _opt(1, "dump", "message", message=DUMP_STATS_ENTRY),
        _opt(2, "restore", "message", message=RESTORE_STATS_ENTRY),
    ],
)


# --- images/pagemap.proto -------------------------------------------------------------

PAGEMAP_HEAD = Message("pagemap_head", [_req(1, "pages_id", "uint32")])

PAGEMAP_ENTRY = Message(
    "pagemap_entry",
    [
        _req(1, "vaddr", "uint64"),
        _req(2, "compat_nr_pages", "uint32"),  # "nr_pages" before v4.2; 0 from v4.2 on
        _opt(3, "in_parent", "bool"),
        _opt(4, "flags", "uint32"),  # PE_* bits, criu/include/pagemap.h
        _opt(5, "nr_pages", "uint64"),  # v4.2
    ],
)
