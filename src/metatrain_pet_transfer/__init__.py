"""Transfer learning for pretrained PET models, as a metatrain architecture."""

from .model import PETTransfer
from .trainer import Trainer


__model__ = PETTransfer
__trainer__ = Trainer
__capabilities__ = {
    "supported_devices": __model__.__supported_devices__,
    "supported_dtypes": __model__.__supported_dtypes__,
}

__authors__ = [("metatrain-pet-transfer developers", "@metatrain-pet-transfer")]
__maintainers__ = [("metatrain-pet-transfer developers", "@metatrain-pet-transfer")]

__all__ = ["PETTransfer", "Trainer"]
