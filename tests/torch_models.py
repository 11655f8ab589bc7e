"""PyTorch models written by hand for the cross-checks (not made by ``qr.interop.to_torch``).

Their state_dict keys follow torchvision (MLP/CNN: ``fc1``, ``conv1``, ...) or kuangliu/pytorch-cifar
(ResNet-18: ``shortcut``, ``linear``), so ``qr.interop.load_torch_state_dict`` or ``from_torch`` reads
them. Weights come from PyTorch's own default initialisation under ``torch.manual_seed``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    def __init__(self, sizes=(784, 1000, 1000, 10), dropout=0.0):
        super().__init__()
        self.n = len(sizes) - 1
        for i in range(self.n):
            setattr(self, f"fc{i + 1}", nn.Linear(sizes[i], sizes[i + 1]))
        self.p = dropout

    def forward(self, x):
        x = torch.flatten(x, 1)
        for i in range(1, self.n + 1):
            x = getattr(self, f"fc{i}")(x)
            if i < self.n:
                x = F.relu(x)
                if self.p:
                    x = F.dropout(x, self.p, self.training)
        return x


class PaperCNN(nn.Module):
    """conv 1→32 5×5, ReLU, avg-pool 2, conv 32→64 5×5, ReLU, avg-pool 2, fc 1024→512, ReLU, fc 512→10."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.fc1 = nn.Linear(64 * 4 * 4, 512)
        self.fc2 = nn.Linear(512, 10)

    def forward(self, x):
        x = F.avg_pool2d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class BasicBlock(nn.Module):
    """kuangliu's block (``shortcut``, an empty Sequential when the shape is kept), or torchvision's
    (``downsample``, None when the shape is kept, and a ``relu`` child) with ``torchvision=True``."""

    def __init__(self, in_planes, planes, stride=1, torchvision=False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        proj = None
        if stride != 1 or in_planes != planes:
            proj = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        if torchvision:
            self.relu = nn.ReLU(inplace=True)
            self.downsample = proj
        else:
            self.shortcut = proj if proj is not None else nn.Sequential()
        self.torchvision = torchvision

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.torchvision:
            return F.relu(out + (self.downsample(x) if self.downsample is not None else x))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """kuangliu/pytorch-cifar's ResNet18 (3×3 stem, no max-pool), with a global average pool in place of
    its ``avg_pool2d(out, 4)`` so that inputs smaller than 32×32 work (the same for 32×32)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks = []
            for s in (stride, 1):
                blocks.append(BasicBlock(in_planes, planes, s))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(torch.flatten(out, 1))


class TorchvisionResNet18(nn.Module):
    """torchvision's resnet18 layout and names (7×7 stride-2 stem, max-pool, ``downsample``, ``fc``),
    written out so that torchvision need not be installed."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_planes = 64
        for i, (planes, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), 1):
            blocks = []
            for s in (stride, 1):
                blocks.append(BasicBlock(in_planes, planes, s, torchvision=True))
                in_planes = planes
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
