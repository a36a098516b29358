"""The anchor: TorchServe's stock ``image_classifier`` handler, with only its transform
constant changed so it can serve our 32x32 artifact fairly.

Stock, it resizes to 256 and centre-crops 224 (ImageNet) and then normalises with ImageNet
statistics. Our model would run on 49x the pixels (it pools adaptively, so it does not fail)
and normalise twice, so its throughput would measure a different computation. Here the
stock class decodes, transforms (torchvision), stacks, runs the model, softmaxes and maps
the top-5 exactly as shipped; only ``image_processing`` is 32x32 without Normalize (the
artifact normalises inside, like every clead model).
"""

from torchvision import transforms
from ts.torch_handler.image_classifier import ImageClassifier


class StockImageClassifier32(ImageClassifier):
    image_processing = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor()])
