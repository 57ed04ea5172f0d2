"""Hub transport: publish checkpoints (git or HTTP), fetch them back, run a local Hub (olah), serve zoo/.

Importing this package is cheap: huggingface_hub is imported only when a download or upload runs.
"""

from hatzoo.hub.download import cached_snapshot, hub_file, is_repo_id, snapshot, snapshot_commit
from hatzoo.hub.local_hub import LocalHub, repo_folder
from hatzoo.hub.publish import publish_git, publish_http
from hatzoo.hub.release import build_mirror, release_pin, release_revision

__all__ = [
    "LocalHub",
    "build_mirror",
    "cached_snapshot",
    "hub_file",
    "is_repo_id",
    "publish_git",
    "publish_http",
    "release_pin",
    "release_revision",
    "repo_folder",
    "snapshot",
    "snapshot_commit",
]
