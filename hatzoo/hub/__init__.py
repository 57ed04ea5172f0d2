"""Hub transport: publish checkpoint folders (git or HTTP), fetch them back, and run a local Hub (olah).

Importing this package is cheap: huggingface_hub is imported only when a download or upload runs.
"""

from hatzoo.hub.download import hub_file, is_repo_id, snapshot, snapshot_commit
from hatzoo.hub.local_hub import LocalHub, repo_folder
from hatzoo.hub.publish import publish_git, publish_http

__all__ = [
    "LocalHub",
    "hub_file",
    "is_repo_id",
    "publish_git",
    "publish_http",
    "repo_folder",
    "snapshot",
    "snapshot_commit",
]
