"""Model registry. Importing this package registers every architecture."""

from chanscope.models import resnet as _resnet  # noqa: F401  (registers the architectures)
from chanscope.models._registry import create_model, is_model, list_models, register_model
from chanscope.models.resnet import FEATURE_SELECT, CifarResNet, Normalize
from chanscope.models.select import CAS, CIFS, PROBES, SelectBlock

__all__ = ["create_model", "list_models", "is_model", "register_model", "CifarResNet", "Normalize",
           "CIFS", "CAS", "SelectBlock", "FEATURE_SELECT", "PROBES"]
