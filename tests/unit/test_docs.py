"""The documentation stays true: the configuration page is the code's, links resolve, nothing a user
reads points outside the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
USER_DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_configuration_page_is_what_config_explain_prints():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "gen_config_doc.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + "\n(run `make docs` after changing a config field)"


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for page in USER_DOCS:
        for target in LINK.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_nothing_a_user_reads_points_at_the_teams_shared_folder():
    offenders = [str(p.relative_to(REPO)) for p in USER_DOCS if "../shared" in p.read_text()]
    offenders += [str(p.relative_to(REPO)) for p in (REPO / "packaging").rglob("*")
                  if p.is_file() and p.suffix in {".toml", ".md", ".service", ".sh", ".json"} and "../shared" in p.read_text()]
    assert not offenders, f"these point at ../shared, which users do not have: {offenders}"


def test_the_readme_links_every_guide():
    readme = (REPO / "README.md").read_text()
    missing = [p.name for p in sorted((REPO / "docs").glob("*.md")) if f"docs/{p.name}" not in readme]
    assert not missing, f"README.md does not link {missing}"


TOML_BLOCK = re.compile(r"```toml\n(.*?)```", re.S)


def test_every_node_toml_snippet_in_the_docs_passes_config_check(tmp_path):
    import tomllib

    from cynode.config import load_config
    from cynode.config.sections import NodeConfig

    sections = set(NodeConfig.model_fields)
    checked = 0
    for page in USER_DOCS:
        for n, block in enumerate(TOML_BLOCK.findall(page.read_text())):
            data = tomllib.loads(block)  # every TOML block in the docs must at least be TOML
            if not data or not set(data) <= sections:
                continue  # not a node.toml (an API-key file, say)
            path = tmp_path / f"{page.stem}-{n}.toml"
            path.write_text(block)
            load_config(path, {})  # raises ConfigError naming the key, as `cynode config check` does
            checked += 1
    assert checked >= 2, "the docs should show node.toml snippets (cluster.md, configuration.md)"
