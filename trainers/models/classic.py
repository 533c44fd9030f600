"""The textbook classifiers: LeNet, the MNIST CNN, SimpleCNN, AlexNet, VGG, GoogLeNet, ResNet.

Every model takes ``in_channels``, ``num_classes`` and ``image_size``: small inputs (28x28
grey, 32x32 colour) get a stride-1 stem, 224x224 inputs the stems of the papers, and an
adaptive average pool before the classifier makes any size above the minimum work.
"""

from __future__ import annotations

from torch import nn

from . import register_model

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _small(image_size: int) -> bool:
    return image_size <= 64


@register_model("lenet", input_size=(1, 28, 28), mean=MNIST_MEAN, std=MNIST_STD)
class LeNet(nn.Module):
    """LeNet-5: conv(6, 5x5) - pool - conv(16, 5x5) - pool - 120 - 84 - classes (ReLU, max-pool)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5) if image_size != 28 else nn.Identity(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


@register_model("mnist_cnn", input_size=(1, 28, 28), mean=MNIST_MEAN, std=MNIST_STD)
class MnistCNN(nn.Module):
    """The book's MNIST CNN: 4 conv layers with batch norm (pool after the 2nd and 4th),
    then 3 linear layers with dropout."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(in_channels, 32), *_conv_bn(32, 32), nn.MaxPool2d(2),
            *_conv_bn(32, 64), *_conv_bn(64, 64), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(7),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(inplace=True), nn.Dropout(0.3),
            nn.Linear(256, 128), nn.ReLU(inplace=True), nn.Dropout(0.3),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("simple_cnn", input_size=(3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD)
class SimpleCNN(nn.Module):
    """Three conv blocks (two convs each, batch norm, max-pool), then three linear layers."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(in_channels, 32), *_conv_bn(32, 32), nn.MaxPool2d(2),
            *_conv_bn(32, 64), *_conv_bn(64, 64), nn.MaxPool2d(2),
            *_conv_bn(64, 128), *_conv_bn(128, 128), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * 16, 256), nn.ReLU(inplace=True), nn.Dropout(0.3),
            nn.Linear(256, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("alexnet_book", input_size=(3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD)
class AlexNet(nn.Module):
    """AlexNet: five convs (11x11/4 stem at 224², 3x3 for small inputs), three linear layers
    with dropout."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        if _small(image_size):
            stem = [nn.Conv2d(in_channels, 64, 3, padding=1), nn.ReLU(inplace=True),
                    nn.MaxPool2d(2), nn.Conv2d(64, 192, 3, padding=1)]
        else:
            stem = [nn.Conv2d(in_channels, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True),
                    nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2)]
        self.features = nn.Sequential(
            *stem, nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(2 if _small(image_size) else 6)
        side = 2 if _small(image_size) else 6
        hidden = 1024 if _small(image_size) else 4096
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(256 * side * side, hidden),
            nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True), nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


VGG_CONFIGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
         "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512,
         512, 512, 512, "M"],
}


@register_model("vgg_book", input_size=(3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD)
class VGG(nn.Module):
    """VGG-11/13/16/19 (``depth``) with batch norm; small inputs get a 512-wide classifier."""

    def __init__(self, depth: int = 16, in_channels: int = 3, num_classes: int = 10,
                 image_size: int = 32, batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        config = VGG_CONFIGS[depth]
        if image_size < 32:  # five pools would shrink a 28² input to nothing
            config = config[:-1]
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, item, 3, padding=1)]
                layers += [nn.BatchNorm2d(item)] if batch_norm else []
                layers += [nn.ReLU(inplace=True)]
                cin = item
        self.features = nn.Sequential(*layers)
        side = 1 if _small(image_size) else 7
        hidden = 512 if _small(image_size) else 4096
        self.avgpool = nn.AdaptiveAvgPool2d(side)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(512 * side * side, hidden), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


class Inception(nn.Module):
    """GoogLeNet's Inception block: 1x1, 1x1-3x3, 1x1-3x3-3x3 and pool-1x1 branches."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool: int):
        super().__init__()
        self.branch1 = nn.Sequential(*_conv_bn_k(cin, c1, 1))
        self.branch2 = nn.Sequential(*_conv_bn_k(cin, c3r, 1), *_conv_bn_k(c3r, c3, 3))
        self.branch3 = nn.Sequential(*_conv_bn_k(cin, c5r, 1), *_conv_bn_k(c5r, c5, 3),
                                     *_conv_bn_k(c5, c5, 3))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), *_conv_bn_k(cin, pool, 1))

    def forward(self, x):
        import torch

        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


def _conv_bn_k(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


@register_model("googlenet_book", input_size=(3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD)
class GoogLeNet(nn.Module):
    """GoogLeNet (Inception v1 with batch norm) without auxiliary heads; GAP + linear head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        if _small(image_size):
            self.stem = nn.Sequential(*_conv_bn_k(in_channels, 192, 3))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1), *_conv_bn_k(64, 64, 1),
                *_conv_bn_k(64, 192, 3), nn.MaxPool2d(3, 2, 1))
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.pool3 = nn.MaxPool2d(3, 2, 1)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.pool4 = nn.MaxPool2d(3, 2, 1)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.4)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.pool3(self.inception3b(self.inception3a(x)))
        for block in (self.inception4a, self.inception4b, self.inception4c, self.inception4d,
                      self.inception4e):
            x = block(x)
        x = self.inception5b(self.inception5a(self.pool4(x)))
        return self.fc(self.dropout(self.avgpool(x).flatten(1)))


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@register_model("resnet_book", input_size=(3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD)
class ResNet(nn.Module):
    """ResNet with basic blocks (``blocks`` per stage; (2, 2, 2, 2) is ResNet-18): the book's
    CIFAR-10 ResNet with a 3x3 stem for small inputs, the 7x7 stem at 224²."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), in_channels: int = 3,
                 num_classes: int = 10, image_size: int = 32, width: int = 64):
        super().__init__()
        if _small(image_size):
            self.stem = nn.Sequential(*_conv_bn_k(in_channels, width, 3))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
        stages = []
        cin = width
        for i, count in enumerate(blocks):
            cout = width * 2 ** i
            stages.append(nn.Sequential(*[BasicBlock(cin if j == 0 else cout, cout,
                                                     2 if i > 0 and j == 0 else 1)
                                          for j in range(count)]))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = (stages + [nn.Identity()] * 4)[:4]
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(self.avgpool(x).flatten(1))
