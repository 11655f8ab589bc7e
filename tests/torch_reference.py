"""Independent PyTorch definitions of the paper's models, written here from the papers/REFERENCE.md,
not generated from qlabref: the cross-checks build these with PyTorch's own initialisation, import
their state_dicts into qlabref, and compare every number.

- ``TorchMLP``: 784-1000-1000-10 (keys fc1/fc2/fc3).
- ``TorchPaperCNN``: our documented CNN sizes (conv1/conv2/fc1/fc2).
- ``KuangliuResNet18``: kuangliu/pytorch-cifar naming (``shortcut``, ``linear``), CIFAR stem.
- ``TorchvisionResNet18``: torchvision naming (``downsample``, ``fc``), ImageNet stem (torchvision
  itself has no CPU wheel here, so its architecture is re-typed from its source layout).
"""
import torch
import torch.nn as nn
import torch.nn.functional as TF


class TorchMLP(nn.Module):
    def __init__(self, sizes=(784, 1000, 1000, 10)):
        super().__init__()
        self.n = len(sizes) - 1
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]), 1):
            setattr(self, f"fc{i}", nn.Linear(a, b))

    def forward(self, x):
        x = torch.flatten(x, 1)
        for i in range(1, self.n + 1):
            x = getattr(self, f"fc{i}")(x)
            if i < self.n:
                x = TF.relu(x)
        return x


class TorchPaperCNN(nn.Module):
    def __init__(self, c1=32, c2=64, hidden=512, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * 16, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        x = TF.avg_pool2d(TF.relu(self.conv1(x)), 2)
        x = TF.avg_pool2d(TF.relu(self.conv2(x)), 2)
        return self.fc2(TF.relu(self.fc1(torch.flatten(x, 1))))


class KuangliuBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = TF.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return TF.relu(out + self.shortcut(x))


class KuangliuResNet18(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, 1)
        self.layer2 = self._make_layer(128, 2)
        self.layer3 = self._make_layer(256, 2)
        self.layer4 = self._make_layer(512, 2)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes, stride):
        layers = []
        for s in (stride, 1):
            layers.append(KuangliuBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = TF.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = TF.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class TorchvisionBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class TorchvisionResNet18(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 1)
        self.layer2 = self._make_layer(128, 2)
        self.layer3 = self._make_layer(256, 2)
        self.layer4 = self._make_layer(512, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def _make_layer(self, planes, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [TorchvisionBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers.append(TorchvisionBlock(planes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomise_batchnorm(model, generator):
    """Give every BatchNorm non-trivial affine parameters and running statistics, so eval mode and
    the running-stat update are really exercised (fresh nets have 1/0/0/1)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                if m.affine:
                    m.weight.uniform_(0.5, 1.5, generator=generator)
                    m.bias.normal_(0, 0.2, generator=generator)
                if m.track_running_stats:
                    m.running_mean.normal_(0, 0.2, generator=generator)
                    m.running_var.uniform_(0.5, 2.0, generator=generator)
                    m.num_batches_tracked.fill_(int(torch.randint(0, 50, (1,), generator=generator)))
