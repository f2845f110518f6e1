"""Adapters to other tools' protocols (LangChain: ``lorentz_rag.integrations.langchain``).

Submodules are imported on use; each imports its tool only when it is itself imported.
"""

from __future__ import annotations
