"""`recipe=NAME`: Hydra's `recipe` group, read from optbench's `recipes/` folder.

Recipes live in their own top-level folder (the layout users browse), not in `configs/`, whose
folders are Hydra's groups. This config source serves that one folder as the group `recipe`, and a
search-path plugin puts it on every search path that Hydra builds (`optbench run` and in-process
composes alike), just before the structured configs. A recipe is read when a composition chooses
it. (Recipes kept in Hydra's ConfigStore instead were deep-copied by every composition: a fifth of
its time.)
"""

# No `from __future__ import annotations`: Hydra's plugin scan loads this module without
# registering it in sys.modules.
from pathlib import Path
from typing import List, Optional

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

from optbench.paths import recipes_dir

GROUP = "recipe"


class RecipeSource(ConfigSource):
    """The group `recipe` and nothing else: `recipe/NAME.yaml` is the file `NAME.yaml` of the folder."""

    @staticmethod
    def scheme() -> str:
        return "optbench-recipes"

    def _file(self, config_path: str) -> Optional[Path]:
        """The file of `recipe/NAME.yaml`; None for any other path."""
        group, _, name = self._normalize_file_name(config_path.strip("/")).partition("/")
        if group != GROUP or not name or "/" in name:
            return None
        return Path(self.path) / name

    def load_config(self, config_path: str) -> ConfigResult:
        path = self._file(config_path)
        if path is None or not path.is_file():
            raise ConfigLoadError(f"Config not found: {config_path} in {self.path}")
        # One read: the header comments (`# @package _global_`), then the YAML, as Hydra's file source does.
        with path.open(encoding="utf-8") as f:
            header = ConfigSource._get_header_dict(f.read(512))
            f.seek(0)
            return ConfigResult(config=OmegaConf.load(f), path=self.full_path(), provider=self.provider, header=header)

    def available(self) -> bool:
        return Path(self.path).is_dir()

    def is_group(self, config_path: str) -> bool:
        return config_path.strip("/") in ("", GROUP)

    def is_config(self, config_path: str) -> bool:
        path = self._file(config_path)
        return path is not None and path.is_file()

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> List[str]:
        where = config_path.strip("/")
        if where == "":
            names = [GROUP]
        elif where == GROUP:
            names = [p.name for p in Path(self.path).glob("*.yaml")]
        else:
            return []
        files: List[str] = []
        for name in names:
            self._list_add_result(files=files, file_path=f"{where}/{name}".lstrip("/"), file_name=name,
                                  results_filter=results_filter)
        return sorted(set(files))


class RecipeSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="optbench", path=f"{RecipeSource.scheme()}://{recipes_dir()}")
