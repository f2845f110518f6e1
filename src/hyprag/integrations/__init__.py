"""Adapters to other tools' protocols (LangChain: ``hyprag.integrations.langchain``).

Submodules are imported on use; each imports its tool only when it is itself imported.
"""

from __future__ import annotations
