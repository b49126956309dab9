"""Fine-tuning a pre-trained model (cross-entropy plus a contrastive term, SCHaNe), on the full data or in
few-shot episodes, and loading what is fine-tuned (an hscl checkpoint, a state_dict, a pre-trained backbone)."""

from hscl.engine.finetune.config import FinetuneConfig
from hscl.engine.finetune.fewshot import FewShotConfig, few_shot
from hscl.engine.finetune.loop import FinetuneResult, finetune
from hscl.engine.finetune.pretrained import Pretrained, load_pretrained

__all__ = ["FewShotConfig", "FinetuneConfig", "FinetuneResult", "Pretrained", "few_shot", "finetune", "load_pretrained"]
