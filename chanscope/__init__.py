"""chanscope: channel-wise activation studies of adversarially trained CNNs (CIFS, Yan et al. 2021)."""

from chanscope.checkpoint import load_model, save_checkpoint
from chanscope.errors import ChanscopeError
from chanscope.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["load_model", "save_checkpoint", "create_model", "list_models", "ChanscopeError", "__version__"]
