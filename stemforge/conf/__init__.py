"""stemforge's Hydra configs, shipped as package data (``pkg://stemforge.conf``).

Primary configs: ``simulate``, ``train``, ``publish``... one YAML per entry point; config groups in the folders
beside them. Add a folder of your own with ``--config-dir PATH`` (or ``hydra.searchpath=[file://PATH]``): a group
file there (``PATH/model/my_net.yaml``) is selected like a shipped one (``model=my_net``).
"""

from pathlib import Path

#: The folder of the shipped configs (what ``pkg://stemforge.conf`` resolves to).
CONF_DIR = Path(__file__).resolve().parent
