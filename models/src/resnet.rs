//! ResNet-50 (He et al., "Deep Residual Learning", 2016) as torchvision defines it (v1.5: the
//! stride of a downsampling bottleneck is on its 3x3 convolution), with frozen batch norm as DETR
//! uses it. Parameter names are torchvision's, so its checkpoints load by name.

use burn::module::{Initializer, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;

use crate::import::{Checkpoint, Tensors};
use crate::ops::{adaptive_avg_pool2d, channel_affine, conv2d, linear, max_pool2d};

/// Batch norm with fixed statistics and affine parameters:
/// `y = x * scale + (bias - running_mean * scale)`, `scale = weight / sqrt(running_var + eps)`.
#[derive(Module, Debug)]
pub struct FrozenBatchNorm2d {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub running_mean: Param<Tensor<1>>,
    pub running_var: Param<Tensor<1>>,
}

impl FrozenBatchNorm2d {
    const EPS: f64 = 1e-5;

    pub fn new(channels: usize, device: &Device) -> Self {
        let fixed = |t: Tensor<1>| Param::from_tensor(t).set_require_grad(false);
        Self {
            weight: fixed(Tensor::ones([channels], device)),
            bias: fixed(Tensor::zeros([channels], device)),
            running_mean: fixed(Tensor::zeros([channels], device)),
            running_var: fixed(Tensor::ones([channels], device)),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_fused(x, None, false)
    }

    /// `relu?(bn(x) (+ residual))` in one pass on the CPU backend.
    pub fn forward_fused(&self, x: Tensor<4>, residual: Option<Tensor<4>>, relu: bool) -> Tensor<4> {
        let scale = self.weight.val() * (self.running_var.val() + Self::EPS).sqrt().recip();
        let shift = self.bias.val() - self.running_mean.val() * scale.clone();
        channel_affine(x, scale, shift, residual, relu)
    }
}

/// A bias-free convolution with `kernel / 2` padding, initialised as torchvision's ResNet does
/// (`kaiming_normal_(mode="fan_out", nonlinearity="relu")`), which keeps activations at scale
/// through a backbone trained from scratch.
fn conv(cin: usize, cout: usize, kernel: usize, stride: usize, device: &Device) -> Conv2d {
    let pad = kernel / 2;
    Conv2dConfig::new([cin, cout], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal { gain: std::f64::consts::SQRT_2, fan_out_only: true })
        .init(device)
}

/// The 1x1 projection of the shortcut when a bottleneck changes width or resolution
/// (torchvision's `downsample.0` and `downsample.1`).
#[derive(Module, Debug)]
pub struct Downsample {
    pub conv: Conv2d,
    pub bn: FrozenBatchNorm2d,
}

/// 1x1 reduce, 3x3 (strided), 1x1 expand by 4, plus the shortcut.
#[derive(Module, Debug)]
pub struct Bottleneck {
    pub conv1: Conv2d,
    pub bn1: FrozenBatchNorm2d,
    pub conv2: Conv2d,
    pub bn2: FrozenBatchNorm2d,
    pub conv3: Conv2d,
    pub bn3: FrozenBatchNorm2d,
    pub downsample: Option<Downsample>,
}

impl Bottleneck {
    fn new(cin: usize, width: usize, stride: usize, device: &Device) -> Self {
        let cout = 4 * width;
        Self {
            conv1: conv(cin, width, 1, 1, device),
            bn1: FrozenBatchNorm2d::new(width, device),
            conv2: conv(width, width, 3, stride, device),
            bn2: FrozenBatchNorm2d::new(width, device),
            conv3: conv(width, cout, 1, 1, device),
            bn3: FrozenBatchNorm2d::new(cout, device),
            downsample: (stride != 1 || cin != cout).then(|| Downsample {
                conv: conv(cin, cout, 1, stride, device),
                bn: FrozenBatchNorm2d::new(cout, device),
            }),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let shortcut = match &self.downsample {
            Some(d) => d.bn.forward(conv2d(&d.conv, x.clone())),
            None => x.clone(),
        };
        let y = self.bn1.forward_fused(conv2d(&self.conv1, x), None, true);
        let y = self.bn2.forward_fused(conv2d(&self.conv2, y), None, true);
        self.bn3.forward_fused(conv2d(&self.conv3, y), Some(shortcut), true)
    }
}

/// ResNet-50: stem, four stages of 3, 4, 6, 3 bottlenecks, optional classifier `fc`.
#[derive(Module, Debug)]
pub struct ResNet {
    pub conv1: Conv2d,
    pub bn1: FrozenBatchNorm2d,
    pub maxpool: MaxPool2d,
    pub layer1: Vec<Bottleneck>,
    pub layer2: Vec<Bottleneck>,
    pub layer3: Vec<Bottleneck>,
    pub layer4: Vec<Bottleneck>,
    pub avgpool: AdaptiveAvgPool2d,
    pub fc: Option<Linear>,
    /// Channels of the last stage's output.
    pub num_features: usize,
}

impl ResNet {
    /// ResNet-50; `num_classes` adds the classifier head, `None` keeps only the feature extractor.
    pub fn resnet50(num_classes: Option<usize>, device: &Device) -> Self {
        Self::new([3, 4, 6, 3], [64, 128, 256, 512], 64, num_classes, device)
    }

    /// A bottleneck ResNet with `layers[i]` blocks of width `channels[i]` (output `4 * channels[i]`)
    /// in stage `i`, after a stem of `stem_width` channels.
    pub fn new(
        layers: [usize; 4],
        channels: [usize; 4],
        stem_width: usize,
        num_classes: Option<usize>,
        device: &Device,
    ) -> Self {
        let mut cin = stem_width;
        let mut stage = |i: usize| {
            (0..layers[i])
                .map(|j| {
                    let stride = if i > 0 && j == 0 { 2 } else { 1 };
                    let block = Bottleneck::new(cin, channels[i], stride, device);
                    cin = 4 * channels[i];
                    block
                })
                .collect::<Vec<_>>()
        };
        let (layer1, layer2, layer3, layer4) = (stage(0), stage(1), stage(2), stage(3));
        Self {
            conv1: conv(3, stem_width, 7, 2, device),
            bn1: FrozenBatchNorm2d::new(stem_width, device),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1,
            layer2,
            layer3,
            layer4,
            avgpool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            fc: num_classes.map(|n| LinearConfig::new(4 * channels[3], n).init(device)),
            num_features: 4 * channels[3],
        }
    }

    /// The parts a trainer freezes from the input on (DETR: the first two), in forward order: the
    /// stem (`conv1`, `bn1`) and the four stages, each as the names of its top-level modules.
    pub fn freeze_groups() -> [&'static [&'static str]; 5] {
        [&["conv1", "bn1"], &["layer1"], &["layer2"], &["layer3"], &["layer4"]]
    }

    /// The last stage's feature map `[B, num_features, H/32, W/32]` (2048 channels for ResNet-50).
    pub fn forward_features(&self, images: Tensor<4>) -> Tensor<4> {
        let x = self.bn1.forward_fused(conv2d(&self.conv1, images), None, true);
        let mut x = max_pool2d(&self.maxpool, x);
        for block in self.layer1.iter().chain(&self.layer2).chain(&self.layer3).chain(&self.layer4) {
            x = block.forward(x);
        }
        x
    }

    /// Class logits, for a ResNet built with a classifier head.
    pub fn forward(&self, images: Tensor<4>) -> Option<Tensor<2>> {
        let fc = self.fc.as_ref()?;
        let pooled = adaptive_avg_pool2d(&self.avgpool, self.forward_features(images));
        let b = pooled.dims()[0];
        Some(linear(fc, pooled.reshape([b, self.num_features])))
    }
}

/// torchvision's `downsample.0`/`downsample.1` are this module's `downsample.conv`/`downsample.bn`;
/// `num_batches_tracked` counters are not weights.
pub fn torchvision_key(key: &str) -> Option<String> {
    if key.ends_with("num_batches_tracked") {
        return None;
    }
    let key = hf_resnet_key(key);
    Some(key.replace("downsample.0.", "downsample.conv.").replace("downsample.1.", "downsample.bn."))
}

/// A key of transformers' own `ResNetModel` / `ResNetBackbone` (`embedder.embedder.convolution`,
/// `encoder.stages.{s}.layers.{b}.layer.{i}.normalization`, `...shortcut.convolution`) under its
/// torchvision name (`conv1`, `layer{s+1}.{b}.bn{i+1}`, `...downsample.0`); other keys unchanged.
/// Both lay the bottleneck out alike (stride in the 3x3, projection shortcut with batch norm).
pub fn hf_resnet_key(key: &str) -> String {
    let part = |name: &str| match name {
        "convolution" => Some("conv"),
        "normalization" => Some("bn"),
        _ => None,
    };
    if let Some(rest) = key.strip_prefix("embedder.embedder.")
        && let Some((module, param)) = rest.split_once('.')
        && let Some(kind) = part(module)
    {
        return format!("{kind}1.{param}");
    }
    let fields: Vec<&str> = key.splitn(8, '.').collect();
    match fields[..] {
        ["encoder", "stages", stage, "layers", block, "layer", i, rest] => {
            if let (Ok(stage), Ok(i), Some((module, param))) =
                (stage.parse::<usize>(), i.parse::<usize>(), rest.split_once('.'))
                && let Some(kind) = part(module)
            {
                return format!("layer{}.{block}.{kind}{}.{param}", stage + 1, i + 1);
            }
        }
        ["encoder", "stages", stage, "layers", block, "shortcut", module, param] => {
            if let (Ok(stage), Some(kind)) = (stage.parse::<usize>(), part(module)) {
                let index = if kind == "conv" { 0 } else { 1 };
                return format!("layer{}.{block}.downsample.{index}.{param}", stage + 1);
            }
        }
        _ => {}
    }
    key.to_string()
}

/// torchvision checkpoints (`resnet50-*.pth`, ImageNet) load by name; a backbone without a
/// classifier (DETR's) leaves the checkpoint's `fc` out.
impl Checkpoint for ResNet {
    fn adapt_checkpoint(&self, tensors: Tensors) -> Result<Tensors, String> {
        Ok(tensors
            .into_iter()
            .filter(|(key, _)| self.fc.is_some() || !key.starts_with("fc."))
            .filter_map(|(key, value)| torchvision_key(&key).map(|k| (k, value)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformers_resnet_names_map_to_torchvision_names() {
        for (hf, torchvision) in [
            ("embedder.embedder.convolution.weight", "conv1.weight"),
            ("embedder.embedder.normalization.running_var", "bn1.running_var"),
            ("encoder.stages.0.layers.0.layer.0.convolution.weight", "layer1.0.conv1.weight"),
            ("encoder.stages.3.layers.2.layer.2.normalization.bias", "layer4.2.bn3.bias"),
            ("encoder.stages.1.layers.0.shortcut.convolution.weight", "layer2.0.downsample.conv.weight"),
            ("encoder.stages.1.layers.0.shortcut.normalization.running_mean", "layer2.0.downsample.bn.running_mean"),
            ("layer1.0.downsample.1.weight", "layer1.0.downsample.bn.weight"),
        ] {
            assert_eq!(torchvision_key(hf).as_deref(), Some(torchvision), "{hf}");
        }
        assert_eq!(torchvision_key("encoder.stages.0.layers.0.layer.0.normalization.num_batches_tracked"), None);
    }
}
