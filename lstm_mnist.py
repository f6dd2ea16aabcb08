"""Classify MNIST digits with a 2-layer LSTM that reads each image row by row.

The companion script of a Chinese-language tutorial on RNNs and LSTMs: each 28x28
image is a sequence of 28 time steps of 28 pixels, a 2-layer `nn.LSTM` reads it, and a
`nn.Linear` layer classifies the output of the last time step. With the tutorial's
recipe (batch 100, Adam lr 1e-3, 30 epochs) expect about 98.8-99.1% test accuracy
(the tutorial reports 99.08%; README says why the last epoch moves by a few tenths) and
about 95-96% after the first epoch.

    python lstm_mnist.py                                   # the tutorial's run, 30 epochs
    python lstm_mnist.py --epochs 1 --device cpu           # a quick look on a laptop
    python lstm_mnist.py --data-dir DIR                    # DIR holds MNIST/raw/ (downloaded there if missing)
    python lstm_mnist.py --show-shapes --bidirectional     # the nn.LSTM shape table, then exit
    python lstm_mnist.py --recipe fast                     # beyond the tutorial: about 99.0% in 3 epochs
    python lstm_mnist.py --draw                            # after a run: write a digit with the mouse, watch it read

How to read it: sections 0 to 8 are the tutorial's code sections, in its order, each
banner carrying its heading; `main()` follows as the table of contents. That is the
learner's path. After `main()` come five marked parts, each holding one kind of thing:
Part 1, inside the LSTM (optional reading); Part 2, why an LSTM (a plain RNN and a GRU
beside it); Part 3, your own handwriting (--predict, --draw); Part 4, beyond the tutorial's
recipe (opt-in flags); Part 5, plumbing a learner may skip. `--help` lists every flag.

怎麼讀這個檔案：從「# 0.」讀到 main() 結束，對應教學的程式碼，段落的順序和標題都和教學一樣；
在編輯器裡搜尋教學的標題（例如「訓練和測試過程」）就能跳到對應的段落。main() 之後有五個部分：
Part 1「LSTM 的內部」（選讀）、Part 2「為什麼用 LSTM」、Part 3「用自己的手寫數字試試看」、
Part 4「教學的訓練設定之外」（要加參數才會啟用）、Part 5「雜務」（初學者可以跳過）。
教學說的「每一行」（影像橫的一排）在這裡叫「每一列」（row：橫的一列 28 個像素），也就是一個時間步。
"""

# ---------------------------------------------------------------------------
# 0. Imports (參照庫檔案)
# ---------------------------------------------------------------------------
# 教學的 optim.Adam 就是 torch.optim.Adam；T.ToTensor() 在第 2 段寫成 .float().div(255)。
# torchvision 和 matplotlib 在用到它們的函式裡才匯入（import），所以匯入這個檔案很快。

import argparse
import collections
import contextlib
import ctypes
import math
import os
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

# ---------------------------------------------------------------------------
# 1. Hyperparameters (超參設定)
# ---------------------------------------------------------------------------
# 預設值只寫一次；命令列參數只會覆蓋它們。數值就是教學的設定，印出的數字才能和教學對照。
# 教學的 num_epoches 拼錯了，這裡叫 epochs。教學以外、要加參數才會啟用的功能，預設值在 Part 4 開頭。
DEFAULTS = {
    # The tutorial's recipe. 教學的訓練設定
    "batch_size": 100,  # images per training step (批次大小)
    "lr": 1e-3,  # Adam's learning rate (學習率)
    "epochs": 30,  # passes over the 60,000 training images (訓練週期數)
    # 教學列出的 nn.LSTM 參數；input_size 固定是 28（一列 28 個像素）。
    "hidden_dim": 128,  # hidden_size: the length of h_t and c_t (隱藏狀態的維度)
    "n_layer": 2,  # num_layers: LSTMs stacked (堆疊的層數)
    "bias": True,  # bias: every gate has bias terms (偏置)
    "batch_first": True,  # batch_first: tensors are (batch, seq, feature)
    "dropout": 0.0,  # dropout between LSTM layers; 0 = off
    "bidirectional": False,  # also read each image bottom-up (雙向 LSTM)
    # The run's own settings. 這次執行本身的設定
    "dataset": "mnist",  # mnist or fashion-mnist
    "data_dir": "./data",  # the folder that holds MNIST/raw/; downloaded if missing
    "out_dir": "./outputs",  # RNN.pth, checkpoint.pt and the figures (存檔與圖的資料夾)
    "device": "auto",  # auto = CUDA, else Apple MPS, else CPU (教學的 use_gpu)
    "seed": 0,  # random seed: the same seed gives the same numbers (亂數種子)
    "log_interval": 100,  # print the mean training loss every N batches (每 N 批印一次)
    "max_batches": None,  # N batches per epoch, a quick look (快速試跑；None = 全部)
}


def pick_device(name):
    """The tutorial's `use_gpu`, extended to Apple GPUs (MPS)."""
    # 依序找 NVIDIA GPU、Apple GPU（MPS），都沒有才用 CPU；資料和模型只用 .to(device) 搬一次。
    if name != "auto":
        return torch.device(name)  # --device cuda / mps: 解析參數時已確認可用
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# ---------------------------------------------------------------------------
# 2. The data (MINST數據集匯入)
# ---------------------------------------------------------------------------
# MINST 是教學標題的拼字（應為 MNIST），保留下來，搜尋才找得到。
# 教學的 DataLoader 每個 epoch 都把每張圖重新轉成張量；這裡一開始就整批轉好，搬到裝置上，比較快。


def load_split(data_dir, dataset, train):
    """(images, labels) of one split: (N, 28, 28) float32 in [0, 1] and (N,) int64."""
    from torchvision import datasets

    class_name = DATASETS[dataset][0]  # "MNIST" (or "FashionMNIST")
    ensure_raw_files(data_dir, class_name, train)  # Part 5: download if missing, check the files
    data = getattr(datasets, class_name)(data_dir, train=train)  # datasets.MNIST(root, train)
    check_labels(data, data_dir, class_name, train)  # Part 5: 只用 raw 檔；每張圖都有 0–9 的標籤
    # 沒有通道維度：教學每批用 img.squeeze(1) 去掉它（MNIST 是單通道灰階圖），這裡一開始就沒有。
    images = data.data.float().div(255)  # what ToTensor does: uint8 0..255 -> float 0..1
    return images, data.targets  # (N, 28, 28), (N,)


def load_data(data_dir, dataset, device, batch_size, seed, max_batches=None, val_size=0):
    """The tutorial's train_loader and test_loader on `device`, "val" and the generator."""
    train_images, train_labels = load_split(data_dir, dataset, train=True)
    test_images, test_labels = load_split(data_dir, dataset, train=False)
    if max_batches:  # --max-batches: 快速試跑時也只測試一小段測試資料
        n_test = max_batches * batch_size
        test_images, test_labels = test_images[:n_test], test_labels[:n_test]
    # Part 4, --val-size: 從訓練資料留一部分當驗證集（"val"），不看測試集就能挑設定。
    val_loader, train_images, train_labels = hold_out(train_images, train_labels, val_size, device)
    generator = torch.Generator().manual_seed(seed)  # 資料順序有自己的亂數
    # make_loader（Part 5）= DataLoader(dataset, batch_size, shuffle)；訓練資料每個 epoch 重新洗牌。
    train_loader = make_loader(train_images.to(device), train_labels.to(device), batch_size,
                               shuffle=True, generator=generator, max_batches=max_batches)
    # 測試不需要梯度，所以一批 500 張（教學是 100）比較快，結果相同。
    test_loader = make_loader(test_images.to(device), test_labels.to(device), EVAL_BATCH_SIZE,
                              shuffle=False)
    return {"train": train_loader, "val": val_loader, "test": test_loader, "generator": generator}


# ---------------------------------------------------------------------------
# 3. The model (定義LSTM結構)
# ---------------------------------------------------------------------------
# 每張圖的一列（教學說的「一行」，即 28 個像素）是一個輸入 x_t，也就是一個時間步。
# RNN(28, 128, 2, 10) 裡流動的張量：
#
#   image (batch, 28, 28) = 28 rows x_0 ... x_27, each (batch, 28 pixels)
#              x_0         x_1                 x_27
#               |           |                   |
#   layer 1:   [A] -h,c-> [A] -h,c-> ... -h,c-> [A]     h_t: (batch, 128) after each row
#               |           |                   |
#   layer 2:   [A] -h,c-> [A] -h,c-> ... -h,c-> [A]     output: (batch, 28, 128)
#                                               |
#                           last h = output[:, -1] = h_n[-1]: (batch, 128)
#                                               |
#                                 Linear(128 -> 10) (the classifer)
#                                               |
#                                10 scores (logits): (batch, 10)
# 每一層只有一個 A 單元，每一列都用同一組權重；第 2 層讀的是第 1 層每一步的 h_t。
IN_DIM = 28  # in_dim = input_size: 一列的 28 個像素，每個時間步讀一列
SEQ_LEN = 28  # 28 rows per image = 28 time steps (28 列 = 28 個時間步)
N_CLASS = 10  # n_class: 十個數字（或十種衣物）


class RNN(nn.Module):
    """The tutorial's model: nn.LSTM over the 28 rows, nn.Linear on the last step."""

    def __init__(self, in_dim, hidden_dim, n_layer, n_class, **lstm_options):
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden_dim, n_layer, **{"batch_first": True, **lstm_options})
        self.batch_first, self.bidirectional = self.lstm.batch_first, self.lstm.bidirectional
        # 沿用教學的拼字 classifer（sic），教學自己的 class RNN 才能直接載入這裡存的 RNN.pth。
        self.classifer = nn.Linear((2 if self.bidirectional else 1) * hidden_dim, n_class)

    def forward(self, images):  # images: (batch, 28 rows = time steps, 28 pixels)
        if not self.batch_first:
            images = images.transpose(0, 1)  # -> (28 time steps, batch, 28 pixels)
        # 沒有傳入 (h_0, c_0)，所以每張圖都從全零的狀態開始讀，和教學一樣。
        output, (h_n, c_n) = self.lstm(images)
        # output: (batch, 28, num_directions * hidden_dim)，最上層每一步的 h_t（沒有 batch_first
        # 時是 (28, batch, ...)）；h_n, c_n: (n_layer * num_directions, batch, hidden_dim)
        if self.bidirectional:  # 反向那一層在最後一列只讀了一列，要用它讀完整張圖的 h_n[-1]
            last = torch.cat([h_n[-2], h_n[-1]], dim=1)  # (batch, 2 * hidden_dim)
        else:  # 教學的 out[:, -1, :]「即hn」：最後一步的 output 就是最上層的 h_n[-1]
            last = output[:, -1, :] if self.batch_first else output[-1]  # (batch, hidden_dim)
        # 接全連線層，得到 10 個分數（logits），還不是機率。
        return self.classifer(last)  # (batch, n_class) scores (logits)


def build_model(hparams):
    """The model the model flags ask for (MODEL_FLAGS): by default RNN(28, 128, 2, 10)."""
    if hparams["cell"] != "lstm" or hparams["pad_rows"]:
        return CellModel(hparams)  # Part 2: --cell gru / rnn, --pad-rows
    return RNN(IN_DIM, hparams["hidden_dim"], hparams["n_layer"], N_CLASS, **lstm_options(hparams))


# ---------------------------------------------------------------------------
# 4. Loss and optimizer (定義損失函數和優化器)
# ---------------------------------------------------------------------------


def make_criterion_and_optimizer(model, lr, weight_decay=0.0):
    # 損失函數接收的是原始分數（logits），自己會做 log-softmax（教學說的「softmax 損失函數」），
    # 所以模型最後不必加 softmax。它傳回的是這一批的平均損失。
    criterion = nn.CrossEntropyLoss()
    if weight_decay:  # Part 4, --weight-decay: AdamW
        return criterion, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    return criterion, torch.optim.Adam(model.parameters(), lr=lr)  # 教學的 optim.Adam


# ---------------------------------------------------------------------------
# 5. Train and test (訓練和測試過程)
# ---------------------------------------------------------------------------


def train_one_epoch(model, loader, criterion, optimizer, levers=None, log_interval=None, label=""):
    """One pass over `loader`: (train_loss per image, train_acc in %, images seen)."""
    levers = levers or Levers()  # 不加 Part 4 的參數時 Levers() 什麼都不改：每一步就是教學的寫法
    model.train()  # 訓練模式：有 dropout 的話會開啟
    # 教學的 train_loss、train_acc 累加值；是裝置上的張量，不必每批都等 GPU 算完再 .item()。
    loss_sum, num_correct, num_seen = 0.0, 0, 0
    for i, (images, labels) in enumerate(loader, 1):  # images: (batch, 28, 28), labels: (batch,)
        images = levers.augment(images)  # Part 4, --augment: 隨機變形；預設不變
        with levers.autocast:  # Part 4, --amp: 混合精度；預設什麼都不做
            out = model(images)  # (batch, 10) scores. 前向傳播，得到每一類的分數
        loss = criterion(out.float(), labels)  # 這一批的平均損失（--amp 時先轉回 float32）
        optimizer.zero_grad()  # 梯度清零
        if levers.step_changed:  # 預設不會進這裡（--one-cycle、--ema 等才會）
            levers.step(loss)
        else:
            loss.backward()  # 反向傳播，算出梯度
            optimizer.step()  # 依梯度更新權重
        loss_sum += loss.detach() * len(labels)  # batch mean -> batch sum
        num_correct += (out.argmax(dim=1) == labels).sum()  # argmax = torch.max(out, 1)[1]
        num_seen += len(labels)
        if log_interval and i % log_interval == 0:
            print(f"  epoch {label} | batch {i:>4}/{len(loader)} | loss {loss_sum / num_seen:.4f}")
    # 損失的單位：教學把每批的平均加總後除以圖片數，等於「每張圖的平均 ÷ batch_size」；
    # 這裡印每張圖的平均，是它的 batch_size 倍（預設 100 倍：教學的 0.000106 是這裡的 0.0106）。
    train_loss = float(loss_sum) / num_seen
    train_acc = 100.0 * int(num_correct) / num_seen  # in %; the tutorial prints 0.996667
    return train_loss, train_acc, num_seen


@torch.inference_mode()  # like the tutorial's torch.no_grad(). 測試時不需要梯度
def evaluate(model, loader, criterion, autocast=contextlib.nullcontext()):
    """(eval_loss per image, eval_acc in %) of `model` on `loader`."""
    model.eval()  # 測試模式：dropout 失去作用
    loss_sum, num_correct, num_seen = 0.0, 0, 0
    for images, labels in loader:
        with autocast:
            out = model(images)
        loss_sum += criterion(out.float(), labels).item() * len(labels)
        num_correct += (out.argmax(dim=1) == labels).sum().item()
        num_seen += len(labels)
    return loss_sum / num_seen, 100.0 * num_correct / num_seen


def fit(run, loaders, criterion, args):
    """Train epochs run.epoch + 1 to args.epochs, testing and saving each (run.epoch: 已完成的)."""
    split = "val" if loaders["val"] else "test"  # --val-size: 驗證集
    train_criterion = run.levers.train_criterion(criterion)  # criterion, or --label-smoothing's
    for epoch in range(run.epoch + 1, args.epochs + 1):  # 教學的 for epoch in range(num_epoches)
        start = time.perf_counter()
        train_loss, train_acc, num_seen = train_one_epoch(
            run.model, loaders["train"], train_criterion, run.optimizer, run.levers,
            args.log_interval, f"{epoch:>2}/{args.epochs}")
        train_seconds = time.perf_counter() - start
        # run.tested：要測試、存檔的模型；預設就是 run.model（--ema 時是權重的移動平均）。
        eval_loss, eval_acc = evaluate(run.tested, loaders[split], criterion, run.levers.autocast)
        seconds = time.perf_counter() - start
        # 教學每個 epoch 印的四行（****、epochN、Finish ...、Test Loss ...）在這裡合成一行。
        print(f"epoch {epoch:>2}/{args.epochs} | train loss {train_loss:.4f} "
              f"acc {train_acc:.2f}% | {split} loss {eval_loss:.4f} acc {eval_acc:.2f}% | "
              f"{seconds:.1f} s, {num_seen / train_seconds:.0f} img/s")
        # Part 5：結果記進 run.history，再存 checkpoint.pt（整個訓練狀態），中斷後可以 --resume。
        run.end_epoch(epoch, train_loss, train_acc, split, eval_loss, eval_acc, seconds)
        save_checkpoint(run, args.out_dir)


# ---------------------------------------------------------------------------
# 6. Save the model (儲存模型)
# ---------------------------------------------------------------------------
# RNN.pth 和教學一樣只有權重；checkpoint.pt 是整個訓練狀態（第 5 段）。


def save_model(model, out_dir):
    """The tutorial's torch.save(model.state_dict(), './RNN.pth'), in --out-dir."""
    path = Path(out_dir) / "RNN.pth"
    # 只存權重（state_dict），不存模型物件；重新載入時先建一個新的 RNN，再把權重放進去（第 7 段）。
    # 存成 CPU 張量：在 GPU 上訓練的檔案，筆電用教學那一行 torch.load 也讀得到。
    weights = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    with atomic_file(path) as f:  # Part 5: 先寫暫存檔，寫完才改名成 RNN.pth
        torch.save(weights, f)
    print(f"saved {path}")
    return path


# ---------------------------------------------------------------------------
# 7. Reload and final test (最終效能測試)
# ---------------------------------------------------------------------------


def final_test(path, run, test_loader, criterion):
    """Reload RNN.pth into a fresh RNN and test it: (model, loss, acc)."""
    model = build_model(run.hparams).to(run.device)  # 新的 RNN(28, 128, 2, 10)
    # 教學的 model.load_state_dict(torch.load('./RNN.pth'))；weights_only=True 不執行檔案裡的程式碼
    model.load_state_dict(torch.load(path, map_location=run.device, weights_only=True))
    print("Final Test" + " (the moving average of the weights, --ema)" * bool(run.settings["ema"]))
    eval_loss, eval_acc = evaluate(model, test_loader, criterion)  # float32, even with --amp
    # 教學的 Final Test 除以批次數，本來就是每張圖的平均損失，和這裡一樣，不必換算。
    print(f"final test loss: {eval_loss:.4f}")
    return model, eval_loss, eval_acc


# ---------------------------------------------------------------------------
# 8. Look at a prediction (提取一個範例進行直觀認識)
# ---------------------------------------------------------------------------
# 教學這段的 .cuda() 在沒有 GPU 的機器上會出錯；它的 plt.imshow 在腳本裡不會顯示也不會存檔。
# 這裡的圖都存成 --out-dir 裡的 PNG 檔（加 --show 才會開視窗），所以沒有螢幕的機器也能跑。


@torch.inference_mode()
def show_example(model, test_loader, class_names):
    """Print test image 0's label, its 10 scores and the predicted class; returns the class."""
    images, labels = test_loader.dataset.tensors  # (N, 28, 28), (N,): 測試集，依原順序
    model.eval()
    # 教學餵 imgs[0]，形狀 (1, 28, 28)：通道維度剛好當成「一張圖的批次」。
    output = model(images[:1]).float().cpu()  # (1, 28, 28) -> (1, 10): one score per class
    pred, label = int(output.argmax(dim=1)), int(labels[0])  # 分數最高的類別就是預測（torch.max）
    print(f"test image 0: label {class_names[label]}, scores {output[0]}")
    print(f"test image 0: label {class_names[label]}, pred {class_names[pred]}")
    return pred


@torch.inference_mode()
def plot_scores(model, image, label, class_names, path):
    """scores.png: the tutorial's example, test image 0, beside its 10 class probabilities."""
    import matplotlib.pyplot as plt

    scores = model.eval()(image.unsqueeze(0))[0].float().cpu()  # (1, 28, 28) -> (10,) logits
    probs = scores.softmax(dim=0)  # 用 softmax 把分數換成機率（加起來是 1）
    fig, (ax_image, ax_bars) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    ax_image.imshow(image.cpu().numpy(), cmap="gray")  # 教學的 plt.imshow(show.numpy())
    ax_image.set(title=f"test image 0: true {class_names[label]}", xticks=[], yticks=[])
    colors = ["tab:green" if i == label else "tab:blue" for i in range(len(class_names))]
    ax_bars.bar(range(len(class_names)), probs.tolist(), color=colors)
    ax_bars.set_xticks(range(len(class_names)), class_names,
                       rotation=45 if len(class_names[0]) > 1 else 0)
    ax_bars.set(ylim=(0, 1), ylabel="probability (softmax of the scores)",
                title=f"pred {class_names[int(probs.argmax())]} / true {class_names[label]}")
    save_figure(fig, path)  # fig.savefig(path)：存成檔案，而不是只在螢幕上畫


def draw_figures(model, test_loader, history, class_names, out_dir, show):
    """scores.png here, the other figures in Part 1; returns {name: path}."""
    use_windows(show)  # Part 1: 只存成檔案；加 --show 才開視窗
    paths = {name: Path(out_dir) / f"{name}.png" for name in FIGURES}  # Part 1: scores.png ...
    images, labels = test_loader.dataset.tensors
    plot_scores(model, images[0], int(labels[0]), class_names, paths["scores"])  # 教學的那個例子
    return draw_more_figures(model, test_loader, history, class_names, paths, show)  # Part 1


# ---------------------------------------------------------------------------
# main(): the table of contents
# ---------------------------------------------------------------------------


def run_tutorial(args, argv, ctrl_c):
    """Sections 1 to 8 in the tutorial's order, with the flags in `args`; returns the results."""
    # 1. 超參設定：裝置（教學的 use_gpu）、印出 device: 和 config:、亂數種子
    device = pick_device(args.device)
    precision = prepare_run(args, device, argv)  # Part 5: 印 device:、config:；--amp 的設定
    torch.manual_seed(args.seed)  # 固定初始權重和 dropout 的亂數（資料順序另有 generator）
    # 2. MINST數據集匯入
    loaders = load_data(args.data_dir, args.dataset, device, args.batch_size, args.seed,
                        args.max_batches, args.val_size)
    # 3. 定義LSTM結構：教學的 RNN(28, 128, 2, 10)，再 .to(device)（教學的 .cuda()）
    model = build_model(model_hparams(args)).to(device)  # model_hparams: nn.LSTM 的參數
    # 4. 定義損失函數和優化器
    criterion, optimizer = make_criterion_and_optimizer(model, args.lr, args.weight_decay)
    # 5. 訓練和測試過程。run（Part 5）包住 model、optimizer、levers、epoch、history；--resume 時讀回
    run = start_run(model, optimizer, loaders, args, precision)
    if not args.eval_only:
        with explain_interrupt(run, argv, ctrl_c):  # Part 5: Ctrl-C says how to go on
            fit(run, loaders, criterion, args)
    # 6. 儲存模型（--ema 時存權重的移動平均）
    path = save_model(run.tested, args.out_dir)
    # 7. 最終效能測試（準確率在最後一行 final test accuracy 印出）
    model, test_loss, test_acc = final_test(path, run, loaders["test"], criterion)
    # 8. 提取一個範例進行直觀認識
    class_names = DATASETS[args.dataset][1]  # "0" to "9" for MNIST
    show_example(model, loaders["test"], class_names)
    figures = draw_figures(model, loaders["test"], run.history, class_names, args.out_dir,
                           args.show)
    print(f"final test accuracy: {test_acc:.2f}%")
    return {"device": str(device), "model": model, "history": run.history, "weights": path,
            "test_loss": test_loss, "final_test_acc": test_acc, "figures": figures,
            "checkpoint": checkpoint_path(args.out_dir)}


def main(argv=None):
    """Run the tutorial's pipeline with the flags in `argv` (default: the command line)."""
    # 流程的目錄在上面的 run_tutorial()：第 1 到第 8 段；Part 1 到 5 在 main() 後面，可以先跳過。
    argv = command_line(argv)  # Part 5: sys.argv[1:]（在 Jupyter 裡是 []）
    args = parse_args(argv)  # Part 5: 參數覆蓋 DEFAULTS，每個都先檢查
    with one_line_errors() as ctrl_c:  # Part 5: 能自己修的問題只印一行，不印 traceback
        # Part 5: --show-shapes、--predict、--compare-cells 另有用途；否則跑第 1 到第 8 段。
        return side_trip(args, argv, ctrl_c) or run_tutorial(args, argv, ctrl_c)


# ===========================================================================
# Part 1. Inside the LSTM (optional reading; 選讀：LSTM 的內部)
# For the learner who wants the tutorial's theory in numbers: the nn.LSTM shape table
# (--show-shapes), one LSTM step computed by hand from nn.LSTM's own weights, and the
# figures beyond the tutorial's one example. Nothing on the learner's path needs it.
# ===========================================================================

def show_shapes(hparams, batch_size):
    """Run one batch through the LSTM and print the tutorial's shape table; return the shapes."""
    model = build_model(hparams)
    lstm = recurrent_layer(model)  # model.lstm (model.gru, model.rnn with --cell)
    is_lstm = isinstance(lstm, nn.LSTM)
    num_directions = 2 if lstm.bidirectional else 1
    # Shapes do not depend on pixel values, so a random batch stands in for MNIST.
    images = torch.rand(batch_size, SEQ_LEN, IN_DIM)
    rows = padded(model, images)  # (batch, 28 + K, 28): --pad-rows K makes the sequence 28 + K rows long
    inputs = rows if lstm.batch_first else rows.transpose(0, 1)
    h_0 = torch.zeros(lstm.num_layers * num_directions, batch_size, lstm.hidden_size)
    c_0 = torch.zeros_like(h_0) if is_lstm else None  # only an LSTM has a cell state c; a GRU's state is h alone
    with torch.no_grad():
        output, state_n = lstm(inputs, (h_0, c_0) if is_lstm else h_0)
        h_n, c_n = state_n if is_lstm else (state_n, None)  # nn.GRU and nn.RNN return (output, h_n)
        logits = model(images)
    seq_layout = "(batch, seq_len, {})" if lstm.batch_first else "(seq_len, batch, {})"
    state = "(num_layers * num_directions, batch, hidden_size)"
    rows = [
        ("input", inputs, seq_layout.format("input_size")),
        ("h_0", h_0, state), ("c_0", c_0, state),
        ("output", output, seq_layout.format("num_directions * hidden_size")),
        ("h_n", h_n, state), ("c_n", c_n, state),
        ("logits", logits, "(batch, n_class), from the classifier"),
    ]
    rows = [row for row in rows if row[1] is not None]  # --cell gru / rnn: no c_0, c_n
    print(f"nn.{type(lstm).__name__}({IN_DIM}, {lstm.hidden_size}, num_layers={lstm.num_layers}, "
          f"bias={lstm.bias}, batch_first={lstm.batch_first}, dropout={lstm.dropout}, "
          f"bidirectional={lstm.bidirectional}); num_directions = {num_directions}")
    if not is_lstm:
        print(f"no c_0, c_n: nn.{type(lstm).__name__} keeps no cell state, only h")
    for name, tensor, formula in rows:
        print(f"{name:<7}{str(tuple(tensor.shape)):<16}{formula}")
    return {name: tuple(tensor.shape) for name, tensor, _ in rows}


# --- Inside the "A" unit: one LSTM step written out by hand --------------------------
# The tutorial says an LSTM is built like an RNN, one "A" unit applied to every row,
# but that A differs inside. These two functions open it, so that gates.png (below) can
# show the gates at work. Eval mode only: they leave out nn.LSTM's dropout between layers.


def lstm_cell(lstm, layer, suffix, x, h, c):
    """One time step of one layer of `lstm`, from its parameters; returns (h_t, c_t, gates).

    `suffix` is "" for the forward direction and "_reverse" for the backward one. The four gates' weights
    are stacked in one matrix, in PyTorch's order i, f, g, o; gate k reads z_k = W_ik x + b_ik + W_hk h + b_hk
    (x = this row x_t, h = h_{t-1}; sigmoid gives 0..1: 0 = closed, 1 = open;
    x 是這一列 x_t，h 是上一步的 h_{t-1}；sigmoid 的值在 0 到 1 之間，0 = 關、1 = 開):
        i = sigmoid(z_i)           input gate: how much of g to write; 輸入閘：候選值 g 要寫進記憶多少
        f = sigmoid(z_f)           forget gate: how much of c_{t-1} to keep; 遺忘閘：舊的細胞狀態 c_{t-1} 要留下多少
        g = tanh(z_g)              the candidate: new values on offer; 候選值：這一步想寫進記憶的新內容（-1 到 1）
        o = sigmoid(z_o)           output gate: how much of tanh(c_t) to show; 輸出閘：記憶 tanh(c_t) 要輸出多少
        c_t = f * c_{t-1} + i * g  cell state: the LSTM's memory; 細胞狀態：LSTM 的長期記憶，留下的舊記憶 + 寫入的新內容
        h_t = o * tanh(c_t)        hidden state: this step's output; 隱藏狀態：這一步的輸出，也傳給下一步和上一層
    (RNN never sets nn.LSTM's proj_size, so there is no weight_hr here.)
    簡單 RNN 只有 h_t = tanh(W x + U h_{t-1} + b)，每一步都整個改寫記憶，所以前面的列容易被忘掉；
    LSTM 的 c_t 在 f 接近 1 時幾乎原封不動地傳下去，這就是教學說的「解決了 RNN 會遺忘序列前段資訊」。
    """
    w_ih = getattr(lstm, f"weight_ih_l{layer}{suffix}")  # (4 * hidden, in_features): W_ii, W_if, W_ig, W_io
    w_hh = getattr(lstm, f"weight_hh_l{layer}{suffix}")  # (4 * hidden, hidden): W_hi, W_hf, W_hg, W_ho
    z = x @ w_ih.T + h @ w_hh.T  # (batch, in_features) and (batch, hidden) -> (batch, 4 * hidden)
    if lstm.bias:  # bias=False: nn.LSTM has no bias_ih / bias_hh at all
        z = z + getattr(lstm, f"bias_ih_l{layer}{suffix}") + getattr(lstm, f"bias_hh_l{layer}{suffix}")
    i, f, g, o = z.chunk(4, dim=1)  # four (batch, hidden) pieces, in PyTorch's gate order
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    c = f * c + i * g  # (batch, hidden)
    h = o * c.tanh()  # (batch, hidden)
    return h, c, {"i": i, "f": f, "g": g, "o": o, "c": c, "h": h}


def lstm_by_hand(lstm, inputs):
    """`lstm(inputs)` in eval mode, step by step; returns output, (h_n, c_n) and the gates.

    `inputs` and `output` are in the lstm's own layout, as for nn.LSTM; h_0 = c_0 = 0.
    gates[k] belongs to the same layer and direction as h_n[k] (forward, then backward,
    for each layer from the bottom): a dict of i, f, g, o, c, h, each (batch, rows,
    hidden), indexed by image row whichever way the direction reads.
    """
    x = inputs if lstm.batch_first else inputs.transpose(0, 1)  # -> (batch, 28 rows, in_features)
    n_rows = x.shape[1]
    zeros = x.new_zeros(x.shape[0], lstm.hidden_size)  # h_0 and c_0 of each layer: (batch, hidden)
    h_n, c_n, gates = [], [], []
    for layer in range(lstm.num_layers):
        outputs = []
        for suffix in ["", "_reverse"] if lstm.bidirectional else [""]:
            # The forward direction reads rows 0 to 27, the backward one 27 down to 0.
            rows = range(n_rows) if suffix == "" else reversed(range(n_rows))
            h, c, steps = zeros, zeros, [None] * n_rows
            for t in rows:  # the same weights at every row: the tutorial's single A unit
                h, c, steps[t] = lstm_cell(lstm, layer, suffix, x[:, t], h, c)
            gates.append({name: torch.stack([step[name] for step in steps], dim=1) for name in steps[0]})
            outputs.append(gates[-1]["h"])  # (batch, 28, hidden): h_t at every row
            h_n.append(h)  # (batch, hidden): the last h_t this direction computed
            c_n.append(c)
        # The layer above reads this layer's h_t as its x_t, as the tutorial explains.
        x = torch.cat(outputs, dim=2)  # (batch, 28, num_directions * hidden)
    output = x if lstm.batch_first else x.transpose(0, 1)  # the top layer's h_t, in the lstm's layout
    return output, (torch.stack(h_n), torch.stack(c_n)), gates  # h_n, c_n: (layers * directions, batch, hidden)


# --- The figures beyond the tutorial's one example ---------------------------------
# An RNN passes what it computed at one row on to the next, so earlier rows shape how
# later rows are read: reading.png shows this from outside (the answer after each row),
# gates.png from inside (lstm_by_hand's gates), mistakes.png where the reading goes wrong.
N_GRID = 16  # test digits drawn in predictions.png (a 4 x 4 grid)
N_READING = 6  # test digits drawn in reading.png (2 rows of 3)
N_READING_MISTAKES = 2  # of which at most this many are mistakes, when there are any
SETTLED_PROB = 0.5  # reading.png: an answer has settled once it keeps at least this probability
INK = 0.5  # reading.png: a row has ink once a pixel is this bright (0 black .. 1 white)
N_UNITS = 32  # units drawn in gates.png: those whose cell state varies most over the rows
N_MISTAKES = 24  # misclassified test digits drawn in mistakes.png (a 4 x 6 gallery)


def plot_predictions(model, images, labels, class_names, path):
    """predictions.png: a grid of test digits titled `pred 7 / true 7`, mistakes in red."""
    import matplotlib.pyplot as plt
    preds = predict(model, [(images[:N_GRID], labels[:N_GRID])]).argmax(dim=1)  # a loader of one batch
    side = math.isqrt(N_GRID)
    fig, axes = plt.subplots(side, side, figsize=(7, 7.6))
    for ax in axes.flat:  # no frames, so no empty box where there are fewer than N_GRID images
        ax.axis("off")
    for ax, image, label, pred in zip(axes.flat, images.cpu().numpy(), labels.tolist(), preds.tolist()):
        ax.imshow(image, cmap="gray")
        ax.set_title(f"pred {class_names[pred]} / true {class_names[label]}", fontsize=9,
                     color="black" if pred == label else "red")
    fig.suptitle("First test images and the model's predictions (mistakes in red)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_curves(history, path):
    """curves.png: loss, accuracy and error rate per epoch, of training and the test (or --val-size) set."""
    import matplotlib.pyplot as plt
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc, ax_error) = plt.subplots(1, 3, figsize=(15, 3.8))
    smoothing = history[0].get("label_smoothing") if history else 0
    splits = ["train"] + [split for split in ("val", "test") if history and f"{split}_acc" in history[0]]
    for split in splits:
        name = f"train (smoothed targets, eps {smoothing:g})" if split == "train" and smoothing else split
        ax_loss.plot(epochs, [row[f"{split}_loss"] for row in history], marker="o", label=name)
        ax_acc.plot(epochs, [row[f"{split}_acc"] for row in history], marker="o", label=split)
        ax_error.plot(epochs, [100 - row[f"{split}_acc"] for row in history], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss per image", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax_error.set(xlabel="epoch", ylabel="error = 100 - accuracy (%), log scale", title="error rate")
    ax_error.set_yscale("log", nonpositive="mask")  # 2% -> 1% -> 0.5% are equal steps: where runs differ
    for ax in (ax_loss, ax_acc, ax_error):
        ax.legend()
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, path)


@torch.inference_mode()
def predict(model, loader):
    """The class probabilities of every image in `loader`, batch by batch: (N, n_class), on the CPU."""
    model.eval()
    return torch.cat([model(images).softmax(dim=1).cpu() for images, _ in loader])


@torch.inference_mode()
def probs_while_reading(model, images):
    """The class probabilities after each row: (batch, 28 rows, n_class), on the CPU.

    The classifier reads output[:, -1], the top layer's h_t after the last row. Applied
    to output[:, t] instead, it gives the answer the model would have made had the image
    ended at row t: an RNN's output at row t has only read rows 0 to t. (Not so with
    --bidirectional, whose backward direction has read the whole image at every row.)
    """
    model.eval()
    rows = padded(model, images)  # --pad-rows K: (batch, 28 + K, 28)
    inputs = rows if model.batch_first else rows.transpose(0, 1)
    output, _ = recurrent_layer(model)(inputs)  # (batch, 28, hidden), or (28, batch, hidden)
    if not model.batch_first:
        output = output.transpose(0, 1)  # -> (batch, 28 rows, hidden)
    return model.classifer(output).softmax(dim=2).cpu()  # (batch, 28, n_class)


def settled_row(steps, image):
    """The row from which the final answer holds: the likeliest class, with probability >= SETTLED_PROB.

    steps: (28 rows, n_class), the probabilities after each row; image: (28, 28). Rows above
    the first row with ink (a pixel of INK or more) do not count: blank rows tell every
    image apart from none, so an answer "settled" there would only be the model's guess
    for a blank start. None if the answer does not hold even at the last row.
    """
    final = int(steps[-1].argmax())
    holds = (steps.argmax(dim=1) == final) & (steps[:, final] >= SETTLED_PROB)  # (28,)
    if not holds[-1]:
        return None
    breaks = (~holds).nonzero()
    inked = (image.amax(dim=1) >= INK).nonzero()
    first_ink = int(inked[0]) if len(inked) else 0
    return max(int(breaks[-1]) + 1 if len(breaks) else 0, first_ink)


def pick_for_reading(preds, labels):
    """Indices of up to N_READING test digits: the first N_READING_MISTAKES mistakes, then the first right ones."""
    wrong = (preds != labels).nonzero().flatten()[:N_READING_MISTAKES]
    right = (preds == labels).nonzero().flatten()[: N_READING - len(wrong)]
    return sorted(wrong.tolist() + right.tolist())


def plot_reading(model, images, labels, probs, class_names, path):
    """reading.png: a few test digits, each beside its class probabilities after every row."""
    import matplotlib.pyplot as plt
    preds = probs.argmax(dim=1)  # (N,)
    chosen = pick_for_reading(preds, labels.cpu())
    reading = probs_while_reading(model, images[chosen])  # (N_READING, 28 rows, n_class)
    cols = math.ceil(N_READING / 2)
    fig, axes = plt.subplots(2, 2 * cols, figsize=(4.3 * cols, 7.4), layout="constrained",
                             gridspec_kw={"width_ratios": [SEQ_LEN, len(class_names)] * cols})
    for (ax_image, ax_probs), i, steps in zip(axes.reshape(-1, 2), chosen, reading):
        label, pred = int(labels[i]), int(preds[i])
        image = with_zero_rows(images[i : i + 1], len(steps) - SEQ_LEN)[0]  # (28 + K rows, 28)
        heatmap = draw_reading(ax_image, ax_probs, image, steps, class_names[pred])
        between = " / " if len(class_names[0]) == 1 else "\n"  # fashion-mnist's long names: two lines
        ax_image.set_title(f"pred {class_names[pred]}{between}true {class_names[label]}",
                           color="black" if pred == label else "red")
        ax_image.set_ylabel("row t (time step)")
        ax_probs.set_xticks(range(len(class_names)), class_names, fontsize=8,
                            rotation=90 if len(class_names[0]) > 1 else 0)
        ax_probs.get_xticklabels()[label].set(color="tab:green", fontweight="bold")  # the true class
    for ax in axes.flat[2 * len(chosen) :]:  # a test set smaller than N_READING
        ax.axis("off")
    fig.colorbar(heatmap, ax=axes, shrink=0.5, label="probability after reading rows 0 to t")
    fig.suptitle("Reading row by row: softmax(classifier(output[:, t])) after each row t (true class in green)\n"
                 f"From the row just above the orange line on (never above the first row with ink) the final "
                 f"answer keeps p >= {SETTLED_PROB:g}; the rows after it are dimmed")
    save_figure(fig, path)


def draw_reading(ax_image, ax_probs, image, steps, name, fontsize=None):
    """One digit read row by row, on two axes: the image (rows 28 + K, 28) with the rows read after the
    answer settled dimmed, and `steps`, its class probabilities after each row; the settled row marked
    in orange, the answer `name` said under the image. Returns the probabilities' image."""
    shown = image.cpu().clone()
    settled = settled_row(steps, shown)
    if settled is not None:
        shown[settled + 1 :] *= 0.3  # dim the rows read after the answer settled
        for ax in (ax_image, ax_probs):
            ax.axhline(settled + 0.5, color="tab:orange", linewidth=1.5)
    ax_image.imshow(shown.numpy(), cmap="gray", vmin=0, vmax=1)
    ax_image.set(xticks=[], yticks=range(0, len(steps), 7))
    ax_image.set_xlabel(f"says {name} from row {settled} on" if settled is not None
                        else f"never sure: p({name}) < {SETTLED_PROB:g}", fontsize=fontsize)
    heatmap = ax_probs.imshow(steps.numpy(), cmap="viridis", vmin=0, vmax=1)
    ax_probs.set_yticks([])
    return heatmap


def plot_gates(model, image, label, class_names, path):
    """gates.png: the top layer's gates and cell state over the 28 rows of test image 0, by hand."""
    import matplotlib.pyplot as plt
    lstm = model.eval().lstm
    inputs = padded(model, image.unsqueeze(0))  # (1, 28 + K rows, 28)
    image = inputs[0]  # drawn with its zero rows, beside the gates at every row
    with torch.inference_mode():
        _, _, gates = lstm_by_hand(lstm, inputs if lstm.batch_first else inputs.transpose(0, 1))
    top = gates[(lstm.num_layers - 1) * (2 if lstm.bidirectional else 1)]  # the top layer, forward direction
    top = {name: value[0].cpu() for name, value in top.items()}  # each (28 rows, hidden)
    units = top["c"].std(dim=0).topk(min(N_UNITS, lstm.hidden_size)).indices  # (N_UNITS,)
    c_max = float(top["c"][:, units].abs().max())
    panels = [("i", "input gate i: how much of g\nis written into c", "viridis", 0, 1),
              ("f", "forget gate f: how much of\nc_{t-1} is kept", "viridis", 0, 1),
              ("o", "output gate o: how much of\ntanh(c_t) becomes h_t", "viridis", 0, 1),
              ("c", "cell state c_t\n= f * c_{t-1} + i * g", "RdBu_r", -c_max, c_max)]
    fig, axes = plt.subplots(1, 5, figsize=(16, 4.8), layout="constrained", sharey=True,
                             gridspec_kw={"width_ratios": [SEQ_LEN] + [len(units)] * 4})
    axes[0].imshow(image.cpu().numpy(), cmap="gray")
    axes[0].set(title=f"test image 0: true {class_names[label]}", xticks=[], ylabel="row t (time step)")
    for ax, (name, title, cmap, low, high) in zip(axes[1:], panels):
        heatmap = ax.imshow(top[name][:, units].numpy(), cmap=cmap, vmin=low, vmax=high)  # (28 rows, N_UNITS)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(units)), units.tolist(), fontsize=6, rotation=90)
        ax.set_xlabel("unit")
    # One colour bar under the image and the three gates (all in [0, 1]), one under c.
    fig.colorbar(axes[1].images[0], ax=axes[:4], location="bottom", shrink=0.4, label="gate value")
    fig.colorbar(heatmap, ax=axes[4], location="bottom", label="c_t")
    axes[0].set_yticks(range(0, len(image), 7))
    direction = ", forward direction" if lstm.bidirectional else ""
    fig.suptitle(f"Inside the top LSTM layer{direction}, row by row, computed by lstm_by_hand: the {len(units)} of "
                 f"{lstm.hidden_size} units whose cell state varies most over the rows, in that order")
    save_figure(fig, path)


def draw_confusion(ax, labels, preds, class_names):
    """The confusion matrix on `ax`: a count for every (true, predicted) pair, mistakes shaded."""
    n = len(class_names)
    confusion = torch.bincount(labels * n + preds, minlength=n * n).view(n, n)  # [true, pred]: counts
    mistakes_only = confusion.float().fill_diagonal_(float("nan"))  # the diagonal is left blank
    most = max(1.0, float(mistakes_only.nan_to_num().max()))
    ax.imshow(mistakes_only.numpy(), cmap="Reds", vmin=0, vmax=most)
    for true in range(n):
        for pred in range(n):
            count = int(confusion[true, pred])
            color = "tab:green" if true == pred else "white" if count > most / 2 else "black"
            if count:
                ax.text(pred, true, count, ha="center", va="center", fontsize=8, color=color)
    rotation = 45 if len(class_names[0]) > 1 else 0
    ax.set_xticks(range(n), class_names, rotation=rotation)
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted class", ylabel="true class", title="confusion matrix: right in green, wrong in red")


def plot_mistakes(images, labels, probs, class_names, path):
    """mistakes.png: the confusion matrix of the test set, and the mistakes the model was surest of."""
    import matplotlib.pyplot as plt
    labels, preds = labels.cpu(), probs.argmax(dim=1)  # (N,), (N,)
    wrong = (preds != labels).nonzero().flatten()  # every mistake
    surest = wrong[probs[wrong, preds[wrong]].argsort(descending=True)][:N_MISTAKES]  # the surest first
    rows = math.isqrt(N_MISTAKES)
    cols = math.ceil(N_MISTAKES / rows)
    mosaic = [["confusion"] * rows + [f"{r * cols + c}" for c in range(cols)] for r in range(rows)]
    fig, axes = plt.subplot_mosaic(mosaic, figsize=(16, 8), layout="constrained")
    draw_confusion(axes["confusion"], labels, preds, class_names)
    for k in range(rows * cols):
        ax = axes[str(k)]
        ax.axis("off")
        if k < len(surest):
            i = int(surest[k])
            ax.imshow(images[i].cpu().numpy(), cmap="gray")
            ax.set_title(f"true {class_names[labels[i]]}\npred {class_names[preds[i]]} ({probs[i, preds[i]]:.2f})",
                         color="red", fontsize=8)
    if len(wrong) == 0:
        axes["0"].text(0, 0.5, "no mistakes", fontsize=14)
    fig.suptitle(f"{len(wrong)} mistakes in {len(labels)} test images. Left: how often each true class (row) was "
                 f"predicted as each class (column).\nRight: the {len(surest)} mistakes made with the highest "
                 f"probability, titled true / pred (probability)")
    save_figure(fig, path)


FIGURES = ("predictions", "scores", "curves", "reading", "gates", "mistakes", "memory")  # each a .png


def draw_more_figures(model, test_loader, history, class_names, paths, show=False):
    """Every figure but section 8's scores.png (one that does not apply leaves `paths`), then the saved
    paths printed (and --show's windows)."""
    images, labels = test_loader.dataset.tensors
    probs = predict(model, test_loader)  # (N, n_class): the whole test set, once, in batches
    plot_predictions(model, images, labels, class_names, paths["predictions"])
    plot_curves(history, paths["curves"])
    plot_memory(model, images, labels, paths["memory"])  # "Why an LSTM", Part 2
    if isinstance(recurrent_layer(model), nn.LSTM):
        plot_gates(model, images[0], int(labels[0]), class_names, paths["gates"])
    else:  # --cell gru / rnn: lstm_by_hand computes an LSTM's gates, which these cells do not have
        skip_figure(paths, "gates", "it shows an LSTM's gates, computed by hand; this model is "
                                    f"nn.{type(recurrent_layer(model)).__name__}")
    plot_mistakes(images, labels, probs, class_names, paths["mistakes"])
    if model.bidirectional:
        # At row t the backward direction has already read every row: no partial reading to show.
        skip_figure(paths, "reading", "with --bidirectional the output at row t has read the whole image")
    else:
        plot_reading(model, images, labels, probs, class_names, paths["reading"])
    for path in paths.values():
        print(f"saved {path}")
    if show:
        show_figures(paths)
    return paths


def skip_figure(paths, name, why):
    """Leave name.png out of this run's figures, and remove an earlier run's: it is not this model's."""
    path = paths.pop(name)
    removed = "; removed the earlier run's" if path.exists() else ""
    path.unlink(missing_ok=True)
    print(f"{name}.png skipped: {why}{removed}")


def save_figure(fig, path):
    """fig.savefig(path), then plt.close(fig); a write that fails (a full disk) names the file."""
    import matplotlib.pyplot as plt
    try:
        fig.savefig(path)
    except OSError as err:
        raise RunError(f"cannot write {path} ({err.strerror or err})") from None
    finally:
        plt.close(fig)


def use_windows(show):
    """Draw to files only (matplotlib's Agg backend, no display needed), unless --show."""
    import matplotlib
    if not show:
        matplotlib.use("Agg")


def show_figures(paths):
    """--show: open every saved figure in a window."""
    import matplotlib.pyplot as plt
    for path in paths.values():
        fig, ax = plt.subplots()
        ax.imshow(plt.imread(path))
        ax.axis("off")
    plt.show()


# ===========================================================================
# Part 2. Why an LSTM (為什麼用 LSTM，不用簡單的 RNN？)
# For the learner who asks whether the tutorial's claim holds: it says a simple RNN forgets the
# early part of a sequence and the LSTM solves this (它解決了RNN會遺忘序列前段資訊的問題). Measured
# with this part's flags (CELL_DEFAULTS: --cell, --pad-rows, --compare-cells) and memory.png (every run).
# 把 nn.LSTM 換成 nn.GRU 或 nn.RNN，在每張圖後面補 K 列零，再量一量誰還記得前面的列。
# The default run never meets this code: build_model makes the tutorial's RNN for --cell lstm, K = 0.
# ===========================================================================

# The flags of this part; the rest of DEFAULTS (section 1), like BEYOND_DEFAULTS (Part 4).
CELL_DEFAULTS = {
    "cell": "lstm",  # the recurrent layer: lstm (the tutorial's), gru, or rnn (a plain tanh RNN)
    "pad_rows": 0,  # K rows of zeros after each image's 28: the answer comes K steps after the digit
    "compare_cells": False,  # train lstm, gru and rnn with the same flags, one table and cells.png
    "seeds": None,  # --compare-cells: one run per seed in this list, and the mean (None: --seed alone)
}

# nn.RNN is the tutorial's simple RNN: h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), no gates, no c.
CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
MEMORY_IMAGES = 1000  # memory.png: the first this many test images (all of a smaller test set)
MEMORY_BAND = (0.1, 0.9)  # memory.png: the band between these quantiles over the images
MEMORY_SEED = 0  # memory.png: the seed of the untrained model drawn beside the trained one


def with_zero_rows(images, pad_rows):
    """(batch, 28, 28) -> (batch, 28 + pad_rows, 28): pad_rows rows of zeros after the last row."""
    return nn.functional.pad(images, (0, 0, 0, pad_rows))  # pixels: 0 left, 0 right; rows: 0 above, pad_rows below


class CellModel(nn.Module):
    """The tutorial's RNN with nn.GRU or nn.RNN in nn.LSTM's place (--cell), reading K zero rows after
    each image (--pad-rows K). The layer is registered under the cell's name, so the state_dict's keys
    say what it is: lstm.*, gru.* or rnn.*, and the tutorial's classifer.*.
    """

    def __init__(self, hparams):
        super().__init__()
        self.cell, self.pad_rows = hparams["cell"], hparams["pad_rows"]
        layer = CELLS[self.cell](IN_DIM, hparams["hidden_dim"], hparams["n_layer"], **lstm_options(hparams))
        self.add_module(self.cell, layer)  # self.lstm, self.gru or self.rnn
        self.batch_first, self.bidirectional = layer.batch_first, layer.bidirectional
        self.classifer = nn.Linear((2 if self.bidirectional else 1) * layer.hidden_size, N_CLASS)

    def forward(self, images):  # images: (batch, 28 rows, 28 pixels)
        return self.read(with_zero_rows(images, self.pad_rows))  # (batch, 28 + K rows, 28) in

    def read(self, rows):
        """The scores after reading `rows`, (batch, rows, 28) already padded: (batch, n_class)."""
        inputs = rows if self.batch_first else rows.transpose(0, 1)
        output, h_n = getattr(self, self.cell)(inputs)  # nn.LSTM's second result is (h_n, c_n), the others' h_n
        if self.cell == "lstm":
            h_n = h_n[0]  # (n_layer * num_directions, batch, hidden_dim)
        if self.bidirectional:  # as in RNN.forward: both directions' final states
            return self.classifer(torch.cat([h_n[-2], h_n[-1]], dim=1))
        return self.classifer(output[:, -1] if self.batch_first else output[-1])  # the last step's output


def lstm_options(hparams):
    """The model flags that go to nn.LSTM (nn.GRU, nn.RNN) as keywords."""
    return {key: hparams[key] for key in ("dropout", "bidirectional", "bias", "batch_first")}


def recurrent_layer(model):
    """The model's nn.LSTM (model.lstm), or with --cell its nn.GRU / nn.RNN."""
    return getattr(model, model.cell) if isinstance(model, CellModel) else model.lstm


def padded(model, images):
    """The rows `model` reads: (batch, 28, 28) -> (batch, 28 + K, 28) with --pad-rows K."""
    return with_zero_rows(images, model.pad_rows if isinstance(model, CellModel) else 0)


def parameter_count(model):
    return sum(p.numel() for p in model.parameters())


def describe_model(model):
    """One line: the recurrent layer, its sizes, the zero rows and the number of parameters."""
    layer, pad_rows = recurrent_layer(model), getattr(model, "pad_rows", 0)  # RNN reads no zero rows
    padding = f", reading {pad_rows} rows of zeros after each image" if pad_rows else ""
    return (f"model: {layer.num_layers} x {layer.hidden_size} {type(layer).__name__}{padding}; "
            f"{parameter_count(model):,} parameters")


def memory_profile(model, images, labels):
    """|d score_true / d x_t| for every row t read: (n_images, 28 + K rows), on the CPU.

    score_true is the true class's logit; x_t is input row t (the image's rows, then the K zero rows);
    |.| is the L2 norm over the row's 28 pixels. A row the answer no longer depends on gets a gradient
    near 0: forgotten (distill.pub, "Visualizing memorization in RNNs", uses the same measure).
    """
    model.eval()  # no dropout
    rows = padded(model, images).detach().requires_grad_()  # (n, 28 + K, 28)
    # cuDNN computes an RNN's backward only in training mode, so on CUDA this runs without it.
    with torch.backends.cudnn.flags(enabled=False):
        scores = model.read(rows) if isinstance(model, CellModel) else model(rows)  # (n, n_class), rows as given
        score_true = scores.gather(1, labels.view(-1, 1)).sum()  # image i's score depends on its rows only
        (grad,) = torch.autograd.grad(score_true, rows)  # (n, 28 + K, 28): d score_true_i / d rows_i
    return grad.norm(dim=2).cpu()  # (n, 28 + K)


def untrained_twin(model):
    """The same architecture at initialisation (seed MEMORY_SEED), leaving the run's random state alone."""
    import copy
    twin = copy.deepcopy(model).cpu()  # drawn again on the CPU: no GPU random state is drawn
    with torch.random.fork_rng(devices=[]):  # the CPU's random state is put back afterwards
        torch.manual_seed(MEMORY_SEED)
        for layer in twin.children():  # the recurrent layer, then the classifier: build_model's order
            layer.reset_parameters()
    return twin.to(next(model.parameters()).device)


def memory_curves(model, images, labels):
    """Per row t, the median and the MEMORY_BAND quantiles of |d score_true / d x_t| over the first
    MEMORY_IMAGES `images`, for `model` and for its untrained twin: {"trained": (3, rows), "untrained": ...}."""
    images, labels = images[:MEMORY_IMAGES], labels[:MEMORY_IMAGES]
    quantiles = torch.tensor([0.5, *MEMORY_BAND])
    return {name: memory_profile(each, images, labels).quantile(quantiles, dim=0)  # (3, 28 + K)
            for name, each in (("trained", model), ("untrained", untrained_twin(model)))}


def draw_memory(ax, lines, ylabel):
    """Memory curves on `ax`, one per (curves, label, color, band): the median per row, and with band the
    band between MEMORY_BAND's quantiles; on a log axis, the start of --pad-rows' zero rows dotted."""
    for curves, label, color, band in lines:
        rows = range(curves.shape[1])
        ax.plot(rows, curves[0].numpy(), color=color, label=label, linewidth=2 if band else 0.8)
        if band:
            ax.fill_between(rows, curves[1].numpy(), curves[2].numpy(), color=color, alpha=0.2)
    if len(rows) > SEQ_LEN:  # --pad-rows: the zero rows start here
        ax.axvline(SEQ_LEN - 0.5, color="black", linestyle=":", label="the digit ends; zero rows follow")
    ax.set_yscale("log")  # the dependence fades by factors: equal steps down are equal factors
    ax.set(xlabel="input row t (time step)", ylabel=ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")


def plot_memory(model, images, labels, path):
    """memory.png: how much the true class's score depends on each row, trained and untrained."""
    import matplotlib.pyplot as plt
    curves = memory_curves(model, images, labels)
    name = type(recurrent_layer(model)).__name__
    n_images = min(MEMORY_IMAGES, len(images))
    low, high = (round(100 * q) for q in MEMORY_BAND)
    fig, ax = plt.subplots(figsize=(9, 4.8), layout="constrained")
    draw_memory(ax, [(curves["trained"], f"trained {name}: median, {low}-{high}% band", "tab:blue", True),
                     (curves["untrained"], f"the same {name} untrained (seed {MEMORY_SEED}): median", "gray", False)],
                "|d score_true / d x_t|  (L2 norm over the row's pixels)")
    # One direction reads row 0 first and row 27 last; with --bidirectional the other reads them the
    # other way round, so both ends of the image are near the answer and the curve dips in the middle.
    low_rows = "in the middle = far from both ends" if model.bidirectional else "on the early rows = forgotten"
    ax.set_title(f"How much the answer depends on each row: the gradient of the true class's score, over "
                 f"{n_images} test images\nLow {low_rows} by the last step (untrained, even an LSTM forgets: "
                 f"its forget gates sit near 0.5)", fontsize=10)
    save_figure(fig, path)


# --- --compare-cells: the three cells, one after another, with the same flags ----------
PROBE_STEPS, PROBE_SECONDS = 5, 2  # --compare-cells times up to 5 steps (2 s) of each cell for its estimate...
FIGURE_SECONDS = 20  # ...and adds this for each run's final test and figures (memory.png: about 8 s)


def compare_cells(args, argv, ctrl_c):
    """Train lstm, gru and rnn with the same flags (run_tutorial), once per seed; print one table, draw cells.png."""
    seeds = args.seeds or [args.seed]
    plan = [(seed, cell) for seed in seeds for cell in CELLS]
    device = pick_device(args.device)  # the one each run_tutorial picks
    print(f"--compare-cells: {len(plan)} runs ({', '.join(CELLS)}"
          f"{', seeds ' + ' '.join(map(str, seeds)) if len(seeds) > 1 else ''}), {epochs_of({'epoch': args.epochs})}"
          f" each; about {training_minutes(args, device) * len(seeds):.0f} min on "
          f"this {device.type.upper()} (a few steps timed)")
    n_test = args.max_batches * args.batch_size if args.max_batches else None  # as load_data slices the test set
    images, labels = (tensor[:n_test].to(device) for tensor in load_split(args.data_dir, args.dataset, train=False))
    results = {cell: [] for cell in CELLS}
    for k, (seed, cell) in enumerate(plan, 1):
        out_dir = Path(args.out_dir) / (cell if len(seeds) == 1 else f"{cell}-seed{seed}")
        print(f"=== --compare-cells: {cell}, seed {seed} ({k}/{len(plan)}) in {out_dir} ===")
        # With --resume a run whose folder holds a checkpoint goes on from it (a finished one is only
        # reloaded) and the others start: Ctrl-C's command finishes them all.
        cell_args = argparse.Namespace(**{**vars(args), "cell": cell, "seed": seed, "out_dir": str(out_dir),
                                          "resume": args.resume and checkpoint_path(out_dir).is_file()})
        result = run_tutorial(cell_args, argv, ctrl_c)
        if seed == seeds[0]:  # cells.png draws the first seed's memory curves
            result["memory"] = memory_curves(result["model"], images, labels)
        results[cell].append(result)
    split = "val" if args.val_size else "test"  # the set each epoch was measured on
    rows = [cells_row(cell, runs, split) for cell, runs in results.items()]
    print_cells_table(rows, split, len(seeds))
    path = plot_cells(results, rows, split, Path(args.out_dir) / "cells.png")
    print(f"saved {path}")
    return {"cells": rows, "results": results, "figure": path}


def training_minutes(args, device):
    """Roughly how long one run of each cell takes, in minutes: the fastest of PROBE_STEPS training
    steps of each (after one to warm up; a busy machine only slows some), times the steps to train,
    plus a tenth for testing and FIGURE_SECONDS per run."""
    keep_cpu_buffers()  # as the runs will
    steps = min(math.ceil((60_000 - args.val_size) / args.batch_size), args.max_batches or math.inf)
    seconds = 0.0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the runs' numbers stay
        for cell in CELLS:
            model = build_model({**model_hparams(args), "cell": cell}).to(device)
            optimizer = torch.optim.Adam(model.parameters())
            images = torch.rand(args.batch_size, SEQ_LEN, IN_DIM).to(device)
            labels = torch.randint(N_CLASS, (args.batch_size,)).to(device)
            times = []
            while len(times) <= PROBE_STEPS and sum(times[1:]) < PROBE_SECONDS:
                start = time.perf_counter()
                loss = nn.functional.cross_entropy(model(images), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                loss.item()  # waits for a GPU to finish
                times.append(time.perf_counter() - start)
            seconds += min(times[1:] or times) * steps * args.epochs * 1.1 + FIGURE_SECONDS
    return seconds / 60


def cells_row(cell, runs, split):
    """One row of the cells' table: the mean over seeds of each epoch's `split` accuracy, the final ones."""
    epochs = [[row[f"{split}_acc"] for row in run["history"]] for run in runs]
    finals = [run["final_test_acc"] for run in runs]
    seconds = [row["seconds"] for run in runs for row in run["history"]]
    return {"cell": cell, "parameters": parameter_count(runs[0]["model"]),
            "epoch_acc": [sum(column) / len(column) for column in zip(*epochs)],
            "epoch_range": [(min(column), max(column)) for column in zip(*epochs)],
            "final_test_acc": sum(finals) / len(finals), "final_range": (min(finals), max(finals)),
            "seconds_per_epoch": sum(seconds) / max(1, len(seconds))}


def print_cells_table(rows, split, n_seeds):
    """The cells' table: the accuracy after each epoch and the final test; with several seeds, their
    mean and (lowest-highest)."""
    def spread(low, high):
        return f" ({low:.2f}-{high:.2f})" if n_seeds > 1 else ""

    mean = f", mean of {n_seeds} seeds" if n_seeds > 1 else ""
    print(f"{'cell':<5} {'parameters':>10} | {split} accuracy after each epoch (%{mean}) | final test | s/epoch")
    for row in rows:
        epochs = " ".join(f"{acc:.2f}{spread(*span)}" for acc, span in zip(row["epoch_acc"], row["epoch_range"]))
        print(f"{row['cell']:<5} {row['parameters']:>10,} | {epochs} | {row['final_test_acc']:.2f}%"
              f"{spread(*row['final_range'])} | {row['seconds_per_epoch']:.1f}")


def plot_cells(results, rows, split, path):
    """cells.png: test error per epoch (log axis; the mean over seeds) and the memory curve of each cell."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter
    fig, (ax_error, ax_memory) = plt.subplots(1, 2, figsize=(13, 4.6), layout="constrained")
    lines = []  # for draw_memory: two per cell, trained and untrained
    for (cell, runs), row, color in zip(results.items(), rows, ("tab:blue", "tab:orange", "tab:green")):
        epochs = range(1, len(row["epoch_acc"]) + 1)
        ax_error.plot(epochs, [100 - acc for acc in row["epoch_acc"]], marker="o", color=color,
                      label=f"{cell} ({split}{f', mean of {len(runs)} seeds' if len(runs) > 1 else ''})")
        curves = runs[0]["memory"]
        lines += [(curves["trained"], f"{cell} trained", color, True),
                  (curves["untrained"], f"{cell} untrained", color, False)]
    ax_error.set_yscale("log", nonpositive="mask")
    percent = FuncFormatter(lambda value, _: f"{value:g}%")  # 2%, 1.5%, not 2x10^0
    ax_error.yaxis.set_major_formatter(percent)
    ax_error.yaxis.set_minor_formatter(percent)
    ax_error.set(xlabel="epoch", ylabel="error = 100 - accuracy, log scale", title="error rate per epoch")
    ax_error.set_xticks(list(epochs))  # whole epochs only
    ax_error.legend(fontsize=8)
    ax_error.grid(alpha=0.3, which="both")
    draw_memory(ax_memory, lines, "|d score_true / d x_t|, median and 10-90% band")
    ax_memory.set_title("memory: how much the answer depends on each row")
    save_figure(fig, path)
    return path


# ===========================================================================
# Part 3. Your own handwriting (用自己的手寫數字試試看)
# For the learner who wants to ask the trained model about a digit they wrote: --predict
# reads photos and drawings, --draw a digit written with the mouse, each made into a 28x28
# image the way MNIST's were. Trains nothing.
# ===========================================================================

# --- Your own handwriting: --predict -------------------------------------------------
# A photo resized straight to 28x28 is read at little better than chance: the model knows only digits made the
# way MNIST's were. to_mnist() makes them that way, with Pillow (which torchvision brings) and torch:
#
#   1. Read small and upright. A JPEG decodes at 1/2 to 1/8 of its size (a 100-megapixel photo too), 16-bit
#      and float levels become 8-bit ones, and a phone's EXIF tag, which says how to turn a photo stored
#      sideways, is applied. 大照片縮小讀入；16 位元、浮點影像換成 8 位元；依 EXIF 標記轉正。
#   2. Transparency onto the paper, never onto black: a drawing app's PNG often has black ink on a transparent
#      page whose hidden colour is black too. 透明背景要換成紙的顏色，直接丟掉 alpha 會變成全黑。
#   3. Grey levels: MNIST's one channel; colour is no clue to the digit. MNIST 只有一個灰階通道，顏色不影響是哪個數字。
#   4. Light ink on black. MNIST's digits are white (1) on black (0); a pen writes dark on light. Judged on the
#      whole image, mostly paper, so neither a big digit nor a dark table round the page fools it.
#      MNIST 是黑底白字：看整張圖（大多是紙）決定要不要反相。
#   5. Ink is what is darker than the paper near it: a hand's shadow or a lens's dark corners dim paper and ink
#      alike, so each pixel is divided by the paper's light there (paper_light): the paper becomes 0, and what
#      stands well above its grain is ink. 除以附近紙的亮度（陰影、暗角消掉）；比紙的雜訊亮很多的才是墨水。
#   6. Not the digit: rows or columns inked nearly end to end. Thick ones at a side, a table or the page's edge,
#      are cut off first; thin ones, ruled or grid lines, become paper, with a stroke across one bridged.
#      切掉邊上的桌面、紙邊；橫線、格線變成紙，筆畫穿過處補回。
#   7. Crop to the ink, else a small digit in a big photo shrinks to a dot. Pieces far apart, a speck, or ink
#      nearly everywhere get a warning. 裁到墨水的範圍；多塊墨水、小污點、滿版墨水時會警告。
#   8. Strokes to MNIST's widths: a ballpoint line in a big photo thickened (at 20x20 it would fade away), a
#      marker's thinned (it would fill the loop of a 9). 細筆加粗，麥克筆變細。
#   9. Fit into 20x20 keeping the aspect ratio, anti-aliased (LANCZOS): a 1 stays narrow, and edges get
#      MNIST's grey levels. 保持長寬比放進 20x20，用 LANCZOS 抗鋸齒縮小。
#  10. Centre of mass at the centre of 28x28, where MNIST put it. 以質心（不是外框）對齊 28x28 的中心，和 MNIST 一樣。
#  11. Values 0..1, as section 2 gives the training images. 數值 0..1，和訓練資料一樣。
PREDICT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".heic", ".heif")  # in a folder
NOT_READ = (".heic", ".heif")  # an iPhone's photos: Pillow cannot read them without a plug-in
N_PREDICT = 8  # images drawn in predict.png (every image gets its printed line)
WORK_SIDE = 1600  # a bigger image is read, or shrunk, to about this longer side (speed, memory)
SHOWN_SIDE = 400  # predict.png's copy of each image: only this small one is kept
PAPER_BLOCKS, PAPER_REACH = 32, 4  # step 5: blocks of 1/32 of the longer side; closing 2 x 4 + 1 blocks wide
INK_SIGMAS = 5  # ink is brighter than the paper by this many times its grain (a std)...
INK_SHARE = 0.15  # ...and, to count for the crop, by this share of the brightest ink's contrast
MIN_CONTRAST = 40  # levels (of 255) between paper and ink below which there is no ink: a blank page
RULE_SHARE = 0.8  # step 6: a row (column) inked on this share of its length is not the digit...
RULE_THICK = 0.03  # ...a rule if its band is at most this share of the side, with a fringe
RULE_FRINGE = 1  # pixels each side; thicker, it must lie along a side of the image (a table)...
EDGE_MOST = 0.3  # ...and be at most this share of it (else it is the digit's own bar)
SKEW_DEGREES, SKEW_STEP, SKEW_SIDE = 4, 0.25, 400  # rules tilted up to 4 degrees made level (steps, copy's width)
PIECE_BLOCKS = 40  # step 7: pieces of ink are found on blocks of 1/40 of the longer side; a second piece
SECOND_DIGIT, SPECK = 0.25, 0.03  # this share of the biggest is another digit, one under this a speck
MOST_INK = 0.4  # ink over this share of the image: a digit cropped with no paper round it, or a misjudged page
THIN_STROKE = 1.2  # strokes narrower than this (pixels, the digit 20 pixels tall) are thickened...
TARGET_STROKE = 1.8  # ...to about this width: MNIST's usual stroke (README)
THICK_STROKE = 3.0  # ...and wider ones (a marker's) thinned to this: 95% of MNIST's are narrower
FIT = 20  # MNIST's box: the digit's longer side becomes 20 pixels...
CENTRE = 14  # ...and its centre of mass lands on row 14, column 14 of the 28x28 (where MNIST's are)
NAME_FONTS = ("Noto Sans CJK", "Noto Sans TC", "Microsoft JhengHei", "PingFang", "Heiti", "Source Han")


def predict_images(args, argv):
    """--predict: load the trained model, read each image the MNIST way, print its answers, draw."""
    if args.dataset != "mnist":
        raise RunError("--predict reads handwritten digits: it needs a model trained on mnist")
    device = pick_device(args.device)
    model, description = load_trained(args, argv)
    model.to(device).eval()
    print(f"model: {description}, on {device}")
    for stream in (sys.stdout, sys.stderr):  # a file name the terminal cannot show prints escaped
        getattr(stream, "reconfigure", lambda **_: None)(errors="backslashreplace")
    done, failed = [], []  # failed: a line for each path that could not be read; the others go on
    for path in image_files(args.predict, failed):
        notes = []  # step 7's warnings
        try:
            given = open_image(path)
            digit = to_mnist(given, notes)  # (28, 28) in [0, 1]
            if digit is None:
                raise RunError(f"{path}: no ink found (a blank page?); write the digit darker")
        except RunError as err:
            bad_input(str(err), failed)
            continue
        probs = predict(model, [(digit[None].to(device), None)])[0]  # (10,): a loader of one batch
        print(answer_line(path, probs) + "".join(f"; warning: {note}" for note in notes))
        given.thumbnail((SHOWN_SIDE, SHOWN_SIDE))  # only this small copy is kept, for predict.png
        done.append({"path": path, "given": given, "digit": digit, "probs": probs, "pred": int(probs.argmax())})
    figure = Path(args.out_dir) / "predict.png"
    figure.unlink(missing_ok=True)  # an earlier run's, which would show other images
    if done:
        use_windows(args.show)
        plot_predict(model, done[:N_PREDICT], figure)
        shown = f" (the first {N_PREDICT} of {len(done)})" if len(done) > N_PREDICT else ""
        print(f"saved {figure}{shown}")
        if args.show:
            show_figures({"predict": figure})
    if failed:  # each one has had its line on stderr; the good ones are printed and drawn above
        raise SystemExit(1)
    return {"predictions": done, "figure": figure if done else None}


def answer_line(name, probs):
    """The line --predict and --draw print for one digit: its two likeliest classes; probs: (10,)."""
    top = probs.topk(2)
    return (f"{name}: pred {int(top.indices[0])} ({100 * top.values[0]:.1f}%), "
            f"then {int(top.indices[1])} ({100 * top.values[1]:.1f}%)")


def bad_input(message, failed):
    """One `lstm_mnist.py: error:` line for a path that cannot be read; the run goes on, exits 1."""
    failed.append(message)
    print(f"lstm_mnist.py: error: {message}", file=sys.stderr)


def load_trained(args, argv):
    """The model in --out-dir: RNN.pth where checkpoint.pt records its weights, else the last finished
    run (*.previous.*), else a lone RNN.pth in the model flags given; returns (model, words on it)."""
    here, previous = read_pair(args.out_dir), read_pair(args.out_dir, "previous")
    if not here["paired"] and here["weights"].is_file() and here["record"] is None:  # the tutorial's own file
        model = load_weights(build_model(model_hparams(args)), read_weights_only(here["weights"]),
                             here["weights"], "the model flags given (no checkpoint.pt): pass the flags it had")
        return model, f"{here['weights']} (no checkpoint.pt: the model flags given)"
    pair = here if here["paired"] else previous if previous["finished"] else None
    if pair is None:
        raise RunError(no_trained_model(args.out_dir, here))
    if pair["record"].get("dataset") != "mnist":  # --predict reads digits, whatever --dataset says
        raise RunError(f"{pair['checkpoint']} was trained on {pair['record'].get('dataset')}: --predict reads "
                       f"handwritten digits, so it needs a model trained on mnist (train one in another --out-dir)")
    record = load_checkpoint(pair["checkpoint"], args, pair["record"])  # Part 5: refuses a damaged file
    use_recorded_model(pair["checkpoint"], record, args, typed_keys(argv))  # typed flags must agree
    model = load_weights(build_model(model_hparams(args)), read_weights_only(pair["weights"]), pair["weights"])
    which = (f", the last finished run: {here['checkpoint']} holds an unfinished one" if pair is previous
             else "" if pair["finished"] else ", an unfinished run")
    return model, f"{pair['weights']} ({epochs_of(record)}, {pair['checkpoint']}{which})"


def no_trained_model(out_dir, here):
    """Why --predict finds no model in `out_dir`, and the command that makes one."""
    if here["record"] and here["weights"].is_file():
        read_weights_only(here["weights"])  # a file that asks for Python code says so first
        return (f"{here['weights']} does not hold the weights {here['checkpoint']} records: they are not of "
                f"one run; train again, or put back the RNN.pth that run saved")
    if here["record"]:
        resume, weights = (shell_command(["--out-dir", str(out_dir), flag]) for flag in ("--resume", "--eval-only"))
        return (f"no finished model in {out_dir}: {here['checkpoint']} holds an unfinished run "
                f"({epochs_of(here['record'])}) and no RNN.pth of it; finish it with: {resume} (with the flags "
                f"it was trained with), or save its weights as they are with: {weights}")
    train = shell_command(["--out-dir", str(out_dir)])  # runs from any folder, on any system
    return f"no trained model in {out_dir} (no RNN.pth); train first: {train} (add --epochs 1 for a quick one)"


def image_files(paths, failed):
    """The files in `paths`, folders opened (their PREDICT_SUFFIXES files, sorted); see bad_input."""
    import stat
    files = []
    for path in map(Path, paths):
        try:  # what `path` is, following links; a folder's files (hidden ones, a Mac's "._seven.png", left out)
            if stat.S_ISDIR(path.stat().st_mode):
                found = sorted(p for p in path.iterdir() if p.suffix.lower() in PREDICT_SUFFIXES
                               and p.is_file() and not p.name.startswith("."))
                if not found:
                    bad_input(f"{path}: no image in this folder ({' '.join(PREDICT_SUFFIXES)})", failed)
                files += found
            elif stat.S_ISREG(path.stat().st_mode):
                files.append(path)  # named on its own: tried whatever its suffix
            else:
                bad_input(f"{path}: not a file or a folder (a device or a pipe?)", failed)
        except OSError as err:  # missing, unreadable, a loop of links: this path's line, the others go on
            why = "no such file or folder" if isinstance(err, FileNotFoundError) else err.strerror
            bad_input(f"{path}: {why}", failed)
    return files


def open_image(path):
    """Step 1: the image at `path`, upright, 8-bit, at most WORK_SIDE; RunError if it cannot be read."""
    from PIL import Image, ImageOps
    if path.suffix.lower() in NOT_READ:
        raise RunError(f"{path}: Pillow cannot read HEIC; save it as JPEG (iPhone: Settings > Camera > Formats > "
                       "Most Compatible)")
    # Pillow refuses an image over twice MAX_IMAGE_PIXELS when it opens it (a small file that unpacks
    # into gigabytes: a "decompression bomb"); here the check is on what is decoded, after draft().
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as image:  # a GIF or WebP opens at its first frame
            size = image.size
            image.draft(image.mode, (WORK_SIDE, WORK_SIDE))  # a JPEG decodes at 1/2, 1/4 or 1/8 of its size
            if image.width * image.height > limit:
                raise RunError(f"{path}: too big to read safely ({size[0]} x {size[1]} pixels); save it smaller")
            if image.mode in ("I", "F") or image.mode.startswith("I;16"):  # 16-bit or float: as its 8-bit version
                top = image.getextrema()[1]
                scale = 255 if top <= 1 else 1 / 257 if top > 255 else 1  # floats 0..1, 16 bits, or 8 held wider
                image = image.convert("F").point(lambda level: level * scale).convert("L")
            image.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.LANCZOS)
            image.convert("L")  # a mode with no grey levels (LAB) fails here, as one line
            upright = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # not an image, truncated, unreadable ...
        if isinstance(err, OSError) and err.errno:  # the system's reason (Permission denied ...), not Pillow's
            raise RunError(f"{path}: {err.strerror}") from None
        raise RunError(f"{path}: not an image Pillow can read ({last_line(err)})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    upright.info["given_size"] = size if (upright.width > upright.height) == (size[0] > size[1]) else size[::-1]
    return upright


def to_mnist(image, notes=None):
    """A Pillow image of one handwritten digit -> (28, 28) float32 in [0, 1], made as MNIST's were; None if it
    holds no ink (a blank page). `notes`, a list if given, gets step 7's warnings."""
    from PIL import Image
    grey = on_paper(image)  # steps 2 and 3: (H, W) grey levels
    grey.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.LANCZOS)
    levels = pixels(grey)  # (H, W), 0..255
    if float(levels.median()) < 127.5:  # step 4: dark paper, so light ink: made dark on light
        levels = 255 - levels
    ink, floor = ink_and_floor(levels, ramps=False)  # a table at a side is ink...
    paper = ~lines(ink, floor)[:, None] & ~lines(ink.T, floor)  # (H, W): not in a band along a side
    levels = cropped(levels, paper) if paper.any() else levels  # ...cut off (step 6)
    ink, floor = ink_and_floor(levels)  # step 5
    ink = bridged(bridged(straightened(ink, floor), floor).T, floor).T  # step 6: rules level, then rows, columns
    contrast = float(ink.max()) - floor
    if contrast < MIN_CONTRAST:
        return None  # no ink: a blank page
    strokes = ink > floor + INK_SHARE * contrast  # step 7: (H, W) True where the digit is
    if notes is not None:
        notes += ink_warnings(strokes)
    digit = ((ink - floor) / contrast).clamp(0, 1)  # the paper 0, the brightest ink 1
    digit = fit_box(restroke(cropped(digit, strokes)))  # steps 8 and 9: (at most 20, at most 20)
    return centre_of_mass_at_centre(digit)  # steps 10 and 11: (28, 28)


def on_paper(image):
    """Steps 2 and 3: a Pillow "L" image, transparent parts filled with the paper's tone."""
    from PIL import Image
    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        return image.convert("L")
    grey, alpha = image.convert("RGBA").convert("LA").split()
    opacity = pixels(alpha) / 255  # (H, W): 0 transparent .. 1 opaque
    if (opacity < 0.5).float().mean() > 0.5:  # mostly transparent: what is opaque is the ink
        ink = (pixels(grey) * opacity).sum() / opacity.sum().clamp(min=1e-6)
        tone = 255 if ink < 128 else 0  # dark ink goes onto white paper, light ink onto black
    else:  # mostly opaque: the paper is there, and its tone fills the holes
        tone = int(pixels(grey)[opacity >= 0.5].median())
    paper = Image.new("L", image.size, tone)
    paper.paste(grey, mask=alpha)  # alpha-blends the grey image onto the paper
    return paper


def pixels(image):
    """A Pillow "L" image (levels 0..255) or "F" image (32-bit floats) as a float32 tensor (H, W)."""
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.float32 if image.mode == "F" else torch.uint8)
    return data.view(image.height, image.width).float()


def paper_light(levels, ramps=True):
    """Step 5: the paper's own light at each pixel of `levels` (H, W), dark ink on light paper."""
    block = max(1, max(levels.shape) // PAPER_BLOCKS)
    light = nn.functional.max_pool2d(levels[None, None], block, ceil_mode=True)  # (1, 1, ~32, ~32)
    # Closing (a max filter, then a min filter) takes out strokes narrower than it and keeps a ramp of
    # light, if the border is copied outwards; bright paper outside makes a dark table at a side ink.
    light = nn.functional.pad(light, (2 * PAPER_REACH,) * 4, **({"mode": "replicate"} if ramps else {"value": 255}))
    light = nn.functional.max_pool2d(light, 2 * PAPER_REACH + 1, stride=1)
    light = -nn.functional.max_pool2d(-light, 2 * PAPER_REACH + 1, stride=1)  # (1, 1, ~32, ~32) again
    # Not blurred: a shadow's sharp edge stays sharp, and bilinear resizing is smooth enough for a ramp.
    return nn.functional.interpolate(light, size=levels.shape, mode="bilinear")[0, 0].clamp(min=1)


def ink_and_floor(levels, ramps=True):
    """Step 5: `levels` (H, W) as ink, the paper ~0 and black ink 255, and the level under which ink is paper."""
    ink = 255 * (1 - levels / paper_light(levels, ramps))  # (H, W)
    paper = float(ink.median())
    # The grain (a std) from the lighter half only, which holds no ink: a Gaussian's quartile is 0.6745 std.
    return ink, paper + INK_SIGMAS * (paper - float(ink.quantile(0.25))) / 0.6745


def lines(ink, floor):
    """Step 6: (H,) True for rows of `ink` (H, W) inked end to end: rules (with fringe), a table or page edge."""
    inked = (ink > floor).float().mean(dim=1) > RULE_SHARE  # (H,)
    above, below = nearest_rows(~inked)
    thickness, side = below - above - 1, len(inked)
    at_side = (above < 0) | (below >= side)
    inked &= (thickness <= RULE_THICK * side) | (at_side & (thickness <= EDGE_MOST * side))
    return nn.functional.max_pool1d(inked[None].float(), 2 * RULE_FRINGE + 1, 1, RULE_FRINGE)[0] > 0


def straightened(ink, floor):
    """Step 6: `ink` (H, W) turned so that rules tilted up to SKEW_DEGREES (a page photographed askew) run level."""
    from PIL import Image
    block = -(-max(ink.shape) // SKEW_SIDE)  # found on a copy at most SKEW_SIDE pixels wide: (h, w)
    inked = nn.functional.max_pool2d((ink > floor).float()[None, None], block, ceil_mode=True)[0, 0]
    rows, cols = torch.arange(inked.shape[0])[:, None], torch.arange(inked.shape[1])[None] - inked.shape[1] / 2
    fullest = {}  # at each angle, the most inked row of the copy sheared by it: at the right one a rule fills a row
    for degrees in torch.arange(-SKEW_DEGREES, SKEW_DEGREES + SKEW_STEP / 2, SKEW_STEP).tolist():
        sheared = (rows + cols * math.tan(math.radians(degrees))).round().long().clamp(0, len(rows) - 1)
        fullest[degrees] = float(torch.bincount(sheared.flatten(), inked.flatten(), minlength=len(rows))[1:-1].max())
    degrees = max(fullest, key=fullest.get)
    if fullest[degrees] < RULE_SHARE * inked.shape[1] or fullest[degrees] <= fullest[0.0]:
        return ink  # no rule, or level already
    return pixels(Image.fromarray(ink.numpy()).rotate(-degrees, Image.Resampling.BILINEAR))  # via an "F" image


def bridged(ink, floor):
    """Step 6: `ink` (H, W) with its rule rows made paper, a stroke across one bridged from above and below."""
    inked = lines(ink, floor)
    above, below = nearest_rows(~inked)
    padded = nn.functional.pad(ink, (0, 0, 1, 1))  # (H + 2, W): a row of paper (0) past each side
    return torch.where(inked[:, None], torch.minimum(padded[above + 1], padded[below + 1]), ink)


def nearest_rows(kept):
    """For each row, the nearest row at or above, and at or below, where `kept` (H,) is True (-1, H: none)."""
    rows = torch.arange(len(kept))
    above = torch.where(kept, rows, -1).cummax(dim=0).values
    below = torch.where(kept, rows, len(kept)).flip(0).cummin(dim=0).values.flip(0)
    return above, below


def ink_warnings(strokes):
    """Step 7: what the crop of `strokes` (H, W) holds besides one digit, in words (a list)."""
    if float(strokes.float().mean()) > MOST_INK:
        return ["ink covers most of the image: leave some paper round the digit"]
    block = max(1, max(strokes.shape) // PIECE_BLOCKS)
    mass = nn.functional.avg_pool2d(strokes[None, None].float(), block, ceil_mode=True)[0, 0]  # (~40, ~40)
    labels = torch.arange(1.0, mass.numel() + 1).view(mass.shape) * (mass > 0)  # each inked block a piece...
    while True:  # ...until blocks at most two apart share the piece of the highest number
        spread = nn.functional.max_pool2d(labels[None, None], 5, stride=1, padding=2)[0, 0] * (mass > 0)
        if torch.equal(spread, labels):
            break
        labels = spread
    sizes = torch.stack([mass[labels == k].sum() for k in labels[mass > 0].unique()]).sort(descending=True).values
    digits = int((sizes >= SECOND_DIGIT * sizes[0]).sum())
    return ([f"{digits} pieces of ink far apart (several digits?): crop to one"] if digits > 1 else []) + \
        (["a speck of ink apart from the digit widens the crop: crop it out"] if sizes[-1] < SPECK * sizes[0] else [])


def cropped(digit, keep):
    """`digit` (H, W) cropped to the rows and columns where `keep` (H, W) is True: (h, w)."""
    rows, cols = keep.any(dim=1).nonzero().flatten(), keep.any(dim=0).nonzero().flatten()
    return digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def restroke(digit):
    """Step 8: `digit`'s strokes thickened to TARGET_STROKE at 20x20 (h + 2r, w + 2r), or thinned to THICK_STROKE."""
    strokes = nn.functional.pad(digit > 0.5, (1, 1, 1, 1)).float()  # (h + 2, w + 2)
    edges = (strokes[1:] != strokes[:-1]).sum() + (strokes[:, 1:] != strokes[:, :-1]).sum()
    width = float(2 * strokes.sum() / edges.clamp(min=1))  # a stroke w wide, L long: area w * L, edges ~2 * L
    long_side = max(digit.shape)
    thin = width * FIT / long_side < THIN_STROKE
    target = TARGET_STROKE if thin else THICK_STROKE
    # Growing (shrinking) each stroke by 2r grows (shrinks) the digit by 2r; solve for the width at 20x20.
    r = round((target * long_side / FIT - width) / (1 - target / FIT) / 2)
    r = max(1, r) if thin else min(0, r)  # < 0: thinner; 0: already MNIST's width
    if r == 0:
        return digit
    grown = nn.functional.pad(digit if r > 0 else -digit, (abs(r),) * 4)[None, None]  # (1, 1, h + 2r, w + 2r)
    # A square max filter 2r + 1 wide (a min filter of -digit), as two 1-D passes: far faster.
    grown = nn.functional.max_pool2d(grown, (1, 2 * abs(r) + 1), stride=1, padding=(0, abs(r)))
    grown = nn.functional.max_pool2d(grown, (2 * abs(r) + 1, 1), stride=1, padding=(abs(r), 0))[0, 0]
    if r > 0:
        return grown
    return cropped(-grown, -grown > 0) if (-grown > 0).any() else digit  # thinner, (h, w) then cropped


def fit_box(digit):
    """Step 9: the longer side to FIT pixels, aspect ratio kept, anti-aliased; -> (<= 20, <= 20)."""
    from PIL import Image
    h, w = digit.shape
    scale = FIT / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # Pillow's (width, height)
    small = pixels(Image.fromarray(digit.numpy()).resize(size, Image.Resampling.LANCZOS))  # an "F" image
    small = small.clamp(0, 1)  # LANCZOS overshoots a little at sharp edges
    return small / small.max()  # MNIST's digits all reach 1


def centre_of_mass_at_centre(digit):
    """Steps 10 and 11: the digit (h, w) in 28x28, its centre of mass on (CENTRE, CENTRE)."""
    h, w = digit.shape
    mass = digit.sum()
    row = float((digit.sum(dim=1) * torch.arange(h)).sum() / mass)  # the centre of mass
    col = float((digit.sum(dim=0) * torch.arange(w)).sum() / mass)
    # Whole-pixel shifts, as MNIST's; kept inside the 28x28 should the mass sit far off the middle.
    top = min(max(round(CENTRE - row), 0), SEQ_LEN - h)
    left = min(max(round(CENTRE - col), 0), IN_DIM - w)
    canvas = torch.zeros(SEQ_LEN, IN_DIM)
    canvas[top : top + h, left : left + w] = digit
    return canvas


def plot_predict(model, done, path):
    """predict.png: each image as given, the 28x28 the model sees, and its answer after each row."""
    import matplotlib.pyplot as plt
    digits = torch.stack([item["digit"] for item in done]).to(next(model.parameters()).device)  # (n, 28, 28)
    # (n, 28 rows, 10): the answer after each row; none with --bidirectional (see reading.png)
    reading = None if model.bidirectional else probs_while_reading(model, digits)
    fig, axes = plt.subplots(len(done), 3, figsize=(6.6, 2.6 * len(done) + 0.8), squeeze=False,
                             layout="constrained",
                             gridspec_kw={"width_ratios": [30, SEQ_LEN, N_CLASS]})
    for (ax_given, ax_digit, ax_probs), item, k in zip(axes, done, range(len(done))):
        ax_given.imshow(item["given"].convert("RGBA"), cmap="gray")
        name = item["path"].name if len(item["path"].name) <= 28 else item["path"].name[:25] + "..."
        font = font_for(name)  # a Chinese name in a font that has its glyphs; else written \u....
        width, height = item["given"].info.get("given_size", item["given"].size)
        ax_given.set_title(f"{name if font else ascii(name)[1:-1]}\nas given ({width} x {height})",
                           fontsize=9, fontproperties=font)
        ax_given.axis("off")
        pred, probs = item["pred"], item["probs"]
        ax_digit.set_title(f"what the model sees\npred {pred} ({100 * probs[pred]:.1f}%)", fontsize=9)
        ax_digit.set(xticks=[], yticks=range(0, SEQ_LEN, 7), ylabel="row t")
        if reading is None:  # --bidirectional: at row t the backward direction has read every row
            ax_digit.imshow(item["digit"].numpy(), cmap="gray", vmin=0, vmax=1)
            ax_probs.axis("off")
            ax_probs.text(0, 0.5, "bidirectional:\nno row-by-row\nreading", fontsize=8)
            continue
        draw_reading(ax_digit, ax_probs, item["digit"], reading[k], str(pred), fontsize=8)
        ax_probs.set_xticks(range(N_CLASS), [str(c) for c in range(N_CLASS)], fontsize=7)
        ax_probs.get_xticklabels()[pred].set(color="tab:orange", fontweight="bold")
        ax_probs.set_title("after row t", fontsize=9)
    fig.suptitle("--predict: each image as given, the 28x28 MNIST would have made of it, "
                 "and the class\nprobabilities after each row (yellow = likely); "
                 "from the orange line on the answer holds", fontsize=10)
    save_figure(fig, path)


# --- Your own handwriting, live: --draw ----------------------------------------------
# Write a digit with the mouse; watch the LSTM read it: the 28x28 it sees and its answer after each row, as you
# write. 用滑鼠寫一個數字，看 LSTM 一列一列讀它、答案怎麼變。The strokes are kept as points (a canvas shrunk to
# 28x28 loses thin strokes; its size changes the answer) and drawn MNIST's way, whatever their size: as wide as
# MNIST's strokes once shrunk to 20x20, centred by mass. 不論寫多大，縮到 20x20 後筆畫都和 MNIST 一樣粗，再以質心置中。
DRAW_SIDE = 200  # pixels: the strokes' longer side when drawn, before fit_box shrinks them to FIT
DRAW_STROKE = 2.2  # pen width at 20x20: at half brightness strokes then measure MNIST's median, 1.8 px
DRAW_PEN = DRAW_STROKE * DRAW_SIDE / (FIT - DRAW_STROKE)  # ~25 px: DRAW_STROKE once the ink box is FIT
LIVE_EVERY = 0.1  # seconds: while a stroke is drawn, the answer is updated at most this often
PAD_LINE = 18  # points: the ink as the pad shows it (the model's pen is DRAW_PEN, whatever this is)
# How the names of matplotlib's backends that open windows for the mouse begin (the last three: Jupyter's ipympl).
WINDOW_BACKENDS = ("tk", "qt", "gtk", "wx", "macosx", "nbagg", "webagg", "widget", "ipympl", "module://ipympl")


def draw_digits(args, argv):
    """--draw: a window where the trained model reads what you write with the mouse, row by row."""
    import matplotlib.pyplot as plt  # parse_args has checked that it opens windows (WINDOW_BACKENDS)
    model, description = load_trained(args, argv)
    print(f"model: {description}, on cpu")  # one digit at a time: the CPU answers in milliseconds
    pad = DrawPad(plt.figure("lstm_mnist.py --draw", figsize=(11, 5)), model.cpu().eval(), args.out_dir)
    plt.show()  # until the window closes; in Jupyter at once, and the pad lives on in the notebook
    return {"draw": pad}


def strokes_to_mnist(strokes):
    """Strokes (lists of (x, y), y down) -> (the 28x28 the model reads, the Pillow image drawn: white on black)."""
    from PIL import Image, ImageDraw
    points = torch.tensor([point for stroke in strokes for point in stroke], dtype=torch.float32)  # (n, 2)
    low, extent = points.amin(dim=0), points.amax(dim=0) - points.amin(dim=0)
    scale = DRAW_SIDE / max(float(extent.max()), 1e-6)  # the longer side -> DRAW_SIDE, whatever it was
    points = (points - low) * scale + DRAW_PEN  # a margin of paper, so --predict finds the border
    image = Image.new("L", tuple((extent * scale + 2 * DRAW_PEN).ceil().int().tolist()), 0)
    pen, r = ImageDraw.Draw(image), DRAW_PEN / 2
    for stroke in points.split([len(stroke) for stroke in strokes]):
        stroke = [tuple(point) for point in stroke.tolist()]
        pen.line(stroke, fill=255, width=round(DRAW_PEN), joint="curve")
        for x, y in stroke:  # round ends, and a dot where you only clicked
            pen.ellipse((x - r, y - r, x + r, y + r), fill=255)
    ink = pixels(image) / 255  # (H, W)
    return centre_of_mass_at_centre(fit_box(cropped(ink, ink > 0))), image  # steps 9 to 11 of --predict


class DrawPad:
    """--draw's figure: the pad, the 28x28 the model sees, its answer after each row, and the answer."""

    def __init__(self, fig, model, out_dir):
        import matplotlib.pyplot as plt
        from matplotlib.widgets import Button
        self.fig, self.model, self.out_dir, self.close = fig, model, Path(out_dir), lambda: plt.close(fig)
        self.strokes, self.drawing, self.last = [], False, 0.0  # strokes: lists of points; pad.lines draws them
        # (left, bottom, width, height) in the 11 x 5 inch figure; the pad is square, 4 x 4 inches, y down.
        self.pad = fig.add_axes((0.02, 0.12, 0.3636, 0.8), xlim=(0, 1), ylim=(1, 0), xticks=[], yticks=[],
                                title="write a digit here")
        self.ax_digit = ax_digit = fig.add_axes((0.42, 0.1, 0.3, 0.66), xticks=[], yticks=range(0, SEQ_LEN, 7),
                                                ylabel="row t", title="what the model sees")
        ax_steps = fig.add_axes((0.78, 0.1, 0.13, 0.66), xticks=range(N_CLASS), yticks=[],
                                title="bidirectional: no reading" if model.bidirectional else "after row t")
        self.steps = probs_while_reading(model, torch.zeros(1, SEQ_LEN, IN_DIM))[0] * 0  # (28 + K rows, 10)
        self.digit_image = ax_digit.imshow(torch.zeros(SEQ_LEN, IN_DIM).numpy(), cmap="gray", vmin=0, vmax=1)
        self.steps_image = ax_steps.imshow(self.steps.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        self.settled = [ax.axhline(math.nan, color="tab:orange", linewidth=1.5) for ax in (ax_digit, ax_steps)]
        self.answer = fig.text(0.66, 0.86, "", fontsize=30, ha="center")
        fig.text(0.13, 0.035, "left mouse: draw | right mouse or u: erase a stroke | c: clear | s: save a PNG | "
                              "q: quit", fontsize=8, va="center")
        self.button = Button(fig.add_axes((0.02, 0.01, 0.1, 0.05)), "Clear")
        self.button.on_clicked(lambda event: self.erase(slice(None)))
        if getattr(fig.canvas.manager, "key_press_handler_id", None):  # matplotlib's keys: s, c, q ...
            fig.canvas.mpl_disconnect(fig.canvas.manager.key_press_handler_id)
        for name, handler in [("button_press_event", self.press), ("motion_notify_event", self.move),
                              ("button_release_event", self.release), ("key_press_event", self.key)]:
            fig.canvas.mpl_connect(name, handler)
        fig.draw_pad = self  # callbacks hold only weak references: the figure keeps the pad alive
        self.update()

    def press(self, event):
        if event.inaxes is not self.pad or self.pad.get_navigate_mode():  # outside, or zooming
            return
        if event.button == 1:  # a new stroke: a list of points, and its line on the pad
            self.drawing = True
            self.strokes.append([(event.xdata, event.ydata)])
            self.pad.plot(event.xdata, event.ydata, "k", lw=PAD_LINE, solid_capstyle="round")
        elif event.button == 3 and self.strokes:  # the stroke nearest the click
            near = [min(math.dist(point, (event.xdata, event.ydata)) for point in s) for s in self.strokes]
            self.erase(slice(k := near.index(min(near)), k + 1))

    def move(self, event):
        if self.drawing and event.inaxes is self.pad:
            self.strokes[-1].append((event.xdata, event.ydata))
            self.pad.lines[-1].set_data(*zip(*self.strokes[-1]))
            if time.monotonic() - self.last >= LIVE_EVERY:
                self.update()
            self.fig.canvas.draw_idle()

    def release(self, event):
        if self.drawing:
            self.drawing = False
            self.update()
            print(answer_line("drawing", self.probs))

    def key(self, event):
        actions = {"c": lambda: self.erase(slice(None)), "u": lambda: self.erase(slice(-1, None)),
                   "s": self.save, "q": self.close}
        actions.get(event.key, lambda: None)()

    def erase(self, strokes):
        for line in self.pad.lines[strokes]:
            line.remove()
        del self.strokes[strokes]
        self.update()

    def update(self):
        """Draw the strokes MNIST's way and ask the model: the 28x28, its answer after each row, the answer."""
        self.last = time.monotonic()
        blank = torch.zeros(SEQ_LEN, IN_DIM), None  # before the first stroke, and after Clear
        self.digit, self.image = strokes_to_mnist(self.strokes) if self.strokes else blank  # (28, 28), Pillow
        if self.model.bidirectional:  # no reading row by row: the answer alone, as --predict reads it
            self.probs = predict(self.model, [(self.digit[None], None)])[0]  # (10,)
        else:  # the answer after the last row is the model's answer: one pass gives both
            self.steps = probs_while_reading(self.model, self.digit[None])[0]  # (28 + K rows, 10)
            self.probs = self.steps[-1]  # (10,)
        settled = settled_row(self.steps, self.digit) if self.strokes else None  # (--pad-rows' rows hold no ink)
        self.digit_image.set_data(self.digit.numpy())
        self.steps_image.set_data(self.steps.numpy())
        for line in self.settled:  # from the orange line on, the answer holds (as in reading.png)
            line.set_ydata([math.nan if settled is None else settled + 0.5] * 2)
        pred = int(self.probs.argmax())
        self.answer.set_text(f"{pred}  {100 * self.probs[pred]:.1f}%" if self.strokes else "")
        says = f"says {pred} from row {settled} on" if settled is not None else f"never sure: p < {SETTLED_PROB:g}"
        self.ax_digit.set_xlabel("" if not self.strokes or self.model.bidirectional else says)
        self.fig.canvas.draw_idle()

    def save(self):
        """s: the drawing as a PNG, dark ink on white paper, that --predict reads to the same answer."""
        if self.image is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = next(path for k in range(1, sys.maxsize)  # drawing-1.png, -2, ...: the first free name
                        if not (path := self.out_dir / f"drawing-{k}.png").exists())
            self.image.point(lambda level: 255 - level).save(path)  # white on black -> dark on white
            again = shell_command(["--predict", str(path), "--out-dir", str(self.out_dir)])
            print(f"saved {path} (read it again: {again})")


def font_for(text):
    """A matplotlib font with every glyph of `text`: its default, else a CJK one found (NAME_FONTS), else None."""
    from matplotlib import font_manager, ft2font
    paths = [font_manager.findfont(font_manager.FontProperties())]
    paths += [font.fname for font in font_manager.fontManager.ttflist if font.name.startswith(NAME_FONTS)]
    for path in paths:
        font = ft2font.FT2Font(path)
        if all(font.get_char_index(ord(char)) for char in text):
            return font_manager.FontProperties(fname=path)


# ===========================================================================
# Part 4. Beyond the tutorial's recipe (opt-in flags; 教學的訓練設定之外：要加參數才會啟用)
# For the learner who has run the tutorial's recipe and wants to go further: the recipes
# (--recipe fast, best) and the levers they are built from, the validation split, mixed
# precision. Off by default. Every value here was chosen on a validation split (README).
# ===========================================================================

# The rest of DEFAULTS (section 1), kept beside the code that uses them; off, so the numbers stay the tutorial's.
BEYOND_DEFAULTS = {
    "recipe": "tutorial",  # a preset of the flags below: tutorial, fast or best (RECIPES)
    "val_size": 0,  # hold out this many training images and report on them each epoch
    "one_cycle": False,  # OneCycleLR schedule + gradient clipping: 99% in fewer epochs
    "weight_decay": 0.0,  # > 0: AdamW, which shrinks every weight a little at each step
    "label_smoothing": 0.0,  # train towards (1 - eps) on the true class, eps spread over all
    "augment": False,  # train on randomly shifted, rotated and scaled copies of each batch
    "ema": 0.0,  # > 0: test and save an exponential moving average of the weights, this decay
    "forget_bias": 0.0,  # add this to every forget gate's bias at the start: remember more at first
    "amp": False,  # mixed precision: bfloat16 or float16 autocast where the device supports it
}

# --recipe sets these flags (any of them can still be given on its own).
RECIPES = {
    "tutorial": {},  # the tutorial's own recipe: the defaults
    "fast": {"epochs": 3, "batch_size": 50, "one_cycle": True, "ema": 0.998, "forget_bias": 1.0},  # 99% in 3 epochs
    "best": {"epochs": 15, "one_cycle": True, "weight_decay": 0.05, "label_smoothing": 0.1,
             "augment": True, "ema": 0.999},  # about 99.5%, the same 2x128 model
}

# --- --val-size: a validation split carved from the training set ------------------------
VAL_SPLIT_SEED = 12345  # fixes which images --val-size holds out, whatever --seed is


def hold_out(images, labels, val_size, device):
    """Split `val_size` training images off at random: (their loader on `device`, or None when 0;
    the training images left; their labels)."""
    if not val_size:
        return None, images, labels
    if val_size >= len(images):
        raise RunError(f"--val-size {val_size} leaves no training images (the set has {len(images)})")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    val_part, train_part = order[:val_size], order[val_size:]
    val_loader = make_loader(images[val_part].to(device), labels[val_part].to(device), EVAL_BATCH_SIZE, False)
    return val_loader, images[train_part], labels[train_part]


# --- The levers: what the opt-in flags change in training -----------------------------
ONE_CYCLE_PEAK = 5  # --one-cycle: the learning rate rises to this many times --lr
CLIP_NORM = 1.0  # --one-cycle: gradients are scaled down to at most this norm
AUGMENT_SHIFT = 2.0  # --augment: shift each training image by up to this many pixels...
AUGMENT_ROTATE = 10.0  # ...rotate it by up to this many degrees...
AUGMENT_SCALE = 0.1  # ...and scale it by up to this fraction, each image at random


class Levers:
    """The opt-in changes to training that `args` ask for, which train_one_epoch hooks in (augment, autocast,
    step); `Levers()`, or the tutorial's flags, is none of them: the tutorial's step (and --amp's autocast)."""

    def __init__(self, model=None, optimizer=None, args=None, steps_per_epoch=None, precision=None):
        args = args or argparse.Namespace(**BEYOND_DEFAULTS)
        if args.forget_bias:
            open_forget_gates(model.lstm, args.forget_bias)
        self.model, self.optimizer, self.warp = model, optimizer, args.augment
        self.autocast = precision.autocast if precision else contextlib.nullcontext()
        self.scaler = precision.scaler if precision else torch.amp.GradScaler(enabled=False)
        # --one-cycle: PyTorch's OneCycleLR warms the rate up to ONE_CYCLE_PEAK * lr, then anneals it to ~0 (README).
        # Warming up lets a 5x higher rate be used; annealing lets the weights settle.
        self.scheduler = None if not args.one_cycle else torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=ONE_CYCLE_PEAK * args.lr, total_steps=args.epochs * steps_per_epoch)
        self.ema = make_ema(model, args.ema) if args.ema else None  # --ema's AveragedModel
        self.label_smoothing = args.label_smoothing
        self.step_changed = bool(self.scheduler or self.ema or self.scaler.is_enabled())

    def augment(self, images):
        return random_warp(images) if self.warp else images

    def train_criterion(self, criterion):
        """The loss to train on: `criterion`, or with --label-smoothing a smoothed one (never used to test)."""
        return nn.CrossEntropyLoss(label_smoothing=self.label_smoothing) if self.label_smoothing else criterion

    def step(self, loss):
        """loss.backward() and optimizer.step(), with what --amp, --one-cycle and --ema add around them."""
        # float16 --amp (GPUs): gradients below ~6e-8 would round to zero, so backward() runs on the loss scaled up
        # and the step divides them back. Elsewhere the scaler is off: scale(loss) is loss, step() is optimizer.step().
        self.scaler.scale(loss).backward()
        if self.scheduler:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(self.model.parameters(), CLIP_NORM)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)  # optimizer.step(), skipped if a scaled gradient overflowed
        self.scaler.update()  # after an overflow, a smaller scale
        if scale is not None and self.scaler.get_scale() < scale:
            return  # the step was skipped: the schedule and the average wait for a real one
        if self.scheduler:
            self.scheduler.step()
        if self.ema:
            self.ema.update_parameters(self.model)


def make_ema(model, decay):
    """--ema: a copy of the model whose weights follow ema = d * ema + (1 - d) * weights after every step,
    an average over the last ~1 / (1 - d) steps that smooths out the noise of single batches. d warms up
    as min(decay, (1 + n) / (10 + n)) after n updates, or the average would stay near the random start."""
    from torch.optim.swa_utils import AveragedModel

    def update(averages, weights, n_averaged):  # lists of tensors; n_averaged: a tensor on the device
        d = ((1 + n_averaged) / (10 + n_averaged)).clamp(max=decay)
        for average, weight in zip(averages, weights):
            average.lerp_(weight, 1 - d)  # average + (1 - d) * (weight - average)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def open_forget_gates(lstm, forget_bias):
    """--forget-bias: start every forget gate more open. A fresh LSTM's f = sigmoid(about 0) = 0.5 halves its
    cell state at every row; +1 on the forget gates' bias (the second quarter of each bias_ih, in the order
    i, f, g, o) starts f at about 0.73, a long-known trick that speeds learning."""
    hidden = lstm.hidden_size
    with torch.no_grad():
        for name, bias in lstm.named_parameters():
            if name.startswith("bias_ih_l"):  # bias_ih_l0, bias_ih_l0_reverse, bias_ih_l1, ...
                bias[hidden : 2 * hidden] += forget_bias


def random_warp(images):
    """--augment: every image of the batch shifted, rotated and scaled at random, all at once on its device
    (affine_grid, grid_sample): (batch, 28, 28) in [0, 1] -> the same. Training only; the test set is never warped."""
    batch = len(images)
    uniform = lambda: torch.rand(batch, device=images.device) * 2 - 1  # noqa: E731 (-1..1 per image)
    angle = uniform() * math.radians(AUGMENT_ROTATE)
    scale = 1 + uniform() * AUGMENT_SCALE
    shift_x, shift_y = (uniform() * AUGMENT_SHIFT * 2 / IN_DIM for _ in range(2))  # the image spans -1..1
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # theta maps each output pixel's position to where it is read from: (batch, 2, 3).
    theta = torch.stack([torch.stack([cos, -sin, shift_x], dim=1),
                         torch.stack([sin, cos, shift_y], dim=1)], dim=1)
    grid = nn.functional.affine_grid(theta, (batch, 1, SEQ_LEN, IN_DIM), align_corners=False)
    # grid_sample wants a channel axis: (batch, 1, 28, 28); pixels from outside are 0 (black).
    return nn.functional.grid_sample(images.unsqueeze(1), grid, align_corners=False).squeeze(1)


# --- --amp: mixed precision, which dtype and whether gradients need scaling -------------
# autocast: the context the forward pass runs in; scaler: a torch.amp.GradScaler, enabled only where something
# computes in float16; label: the words after the device on the "device:" line; note: one more line to print, or None.
Precision = collections.namedtuple("Precision", "autocast scaler label note")


def amp_context(device, amp):
    """--amp: autocast where the device gains from it, a loss scaler where float16 needs one."""
    no_scaling = torch.amp.GradScaler(device.type, enabled=False)  # scale(), step() ... do the plain thing
    if not amp:
        return Precision(contextlib.nullcontext(), no_scaling, None, None)
    if device.type == "cuda":
        # NVIDIA GPUs: bfloat16 where the GPU computes in it (compute capability 8.0 and newer), else float16,
        # whose narrow range needs the loss scaled.
        dtype = torch.bfloat16 if cuda_has_native_bf16() else torch.float16
        autocast = torch.autocast("cuda", dtype=dtype)
        # PyTorch's autocast runs cuDNN's LSTM in float16 whatever dtype it was asked for (README), so ask the
        # device what the LSTM really computes in, and scale the gradients whenever anything runs in float16.
        lstm_dtype = lstm_dtype_under(autocast, device)
        scaled = torch.float16 in (dtype, lstm_dtype)
        label = (f"autocast {dtype_name(dtype)}" + (" with gradient scaling" if scaled else "")
                 + f"; the LSTM runs in {dtype_name(lstm_dtype)}")
        return Precision(autocast, torch.amp.GradScaler("cuda", enabled=scaled), label, None)
    if device.type == "cpu" and cpu_has("_is_avx512_bf16_supported"):
        note = None if cpu_has("_is_amx_tile_supported") else (  # README: slower on one such Xeon, faster on one EPYC
            "--amp: this CPU has bfloat16 instructions but no AMX units; whether bfloat16 trains "
            "faster than float32 here is not known: time an epoch of each")
        # bfloat16 keeps float32's exponent range, so gradients need no scaling.
        return Precision(torch.autocast("cpu", dtype=torch.bfloat16), no_scaling, "bfloat16 autocast", note)
    return Precision(contextlib.nullcontext(), no_scaling, None,
                     f"--amp: no bfloat16 support on {device.type} here; training in float32")


def cuda_has_native_bf16():
    """True on GPUs with bfloat16 arithmetic; False where bfloat16 is only emulated (T4, V100)."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)  # without it, emulation counts: a T4 says yes
    except TypeError:  # a torch from before the keyword: ask the compute capability, as it does
        return torch.cuda.get_device_capability()[0] >= 8


def lstm_dtype_under(autocast, device):
    """The dtype a small nn.LSTM on `device` computes in under `autocast` (runs it once)."""
    lstm = nn.LSTM(IN_DIM, 8, batch_first=True).to(device)
    with autocast, torch.no_grad():
        output, _ = lstm(torch.zeros(1, SEQ_LEN, IN_DIM, device=device))
    return output.dtype


def dtype_name(dtype):
    return str(dtype).removeprefix("torch.")  # torch.float16 -> float16


def cpu_has(probe):
    """Ask one of torch.cpu's feature probes (absent from older torch releases: then no)."""
    return bool(getattr(torch.cpu, probe, lambda: False)())


# ===========================================================================
# Part 5. Plumbing a learner may skip (雜務：可以跳過)
# For whoever maintains the script: the other flags' runs (side_trip), the fast loader, input
# checks, the run folder and its record, safe writes, resume and interrupts, CPU tuning, the
# command line. Nothing above depends on how these work, only on what their docstrings promise.
# ===========================================================================

def side_trip(args, argv, ctrl_c):
    """The flags that do something else than the tutorial's run (the parser allows one at a time):
    their result, or None to run the tutorial's pipeline."""
    if args.show_shapes:  # Part 1: the tutorial's nn.LSTM shape table for these flags
        return {"shapes": show_shapes(model_hparams(args), args.batch_size)}
    if getattr(args, "predict", None):  # Part 3: your own digit images; absent from args unless given
        return predict_images(args, argv)
    if getattr(args, "draw", False):  # Part 3: a digit written with the mouse; absent unless given
        return draw_digits(args, argv)
    if args.compare_cells:  # Part 2: lstm, gru and rnn, one after another
        return compare_cells(args, argv, ctrl_c)
    return None


# --dataset: torchvision's dataset class and the names drawn in the figures.
DATASETS = {
    "mnist": ("MNIST", [str(digit) for digit in range(10)]),
    "fashion-mnist": ("FashionMNIST", ["T-shirt", "Trouser", "Pullover", "Dress", "Coat",
                                       "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]),
}


# --- The fast in-memory loader (used by every run) -------------------------------------
EVAL_BATCH_SIZE = 500  # testing needs no gradients, so bigger batches (faster; README has the numbers)


class BatchIndices(Sampler):
    """One index tensor per batch, from a fresh permutation each epoch, drawn on the CPU from
    `generator` (the same order on every device) and moved to the device once per epoch.
    """

    def __init__(self, n, batch_size, shuffle, generator, device, max_batches=None):
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.generator, self.device, self.max_batches = generator, device, max_batches

    def __len__(self):
        n_batches = math.ceil(self.n / self.batch_size)
        return min(n_batches, self.max_batches or n_batches)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        yield from order.to(self.device).split(self.batch_size)[: len(self)]


def make_loader(images, labels, batch_size, shuffle, generator=None, max_batches=None):
    """The tutorial's DataLoader(dataset, batch_size, shuffle), over tensors already decoded and on
    the device: each batch is one indexing operation instead of batch_size calls to ToTensor.
    """
    sampler = BatchIndices(len(images), batch_size, shuffle, generator, images.device, max_batches)
    # batch_size=None: the sampler yields whole batches of indices; TensorDataset indexes images and labels with each.
    return DataLoader(TensorDataset(images, labels), batch_size=None, sampler=sampler)


class RunError(Exception):
    """A problem the user can fix (missing data, a bad checkpoint): one line, exit code 1."""


@contextlib.contextmanager
def one_line_errors():
    """A problem the user can fix (a RunError, an OSError, running out of memory) ends the run in one
    line and exit 1; Ctrl-C in one line and 130; anything else is a bug and keeps its traceback.
    Yields a dict whose "note" explain_interrupt sets: what Ctrl-C says once training is over.
    """
    ctrl_c = {"note": "interrupted"}
    try:
        yield ctrl_c
    except (RunError, OSError, RuntimeError) as err:
        if (line := one_line(err)) is None:
            raise
        print(f"lstm_mnist.py: error: {line}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt as err:
        print(f"lstm_mnist.py: {str(err) or ctrl_c['note']}", file=sys.stderr)
        raise SystemExit(130) from None


# torch's words for it: "CUDA out of memory" (torch.OutOfMemoryError), "MPS backend out of memory", and the CPU
# allocator's "can't allocate memory" (Linux, macOS) or "not enough memory" (Windows).
OUT_OF_MEMORY = re.compile(r"out of memory|can't allocate memory|not enough memory", re.IGNORECASE)


def one_line(err):
    """The line that explains `err` to the user, or None if it is not a problem the user can fix."""
    if isinstance(err, RunError):
        return str(err)
    if isinstance(err, OSError):  # which file, and why (Permission denied, No space left ...)
        return f"{err.filename}: {err.strerror}" if err.filename and err.strerror else str(err)
    if OUT_OF_MEMORY.search(str(err)):
        asked = re.search(r"tried to allocate ([\d.]+ ?\w+)", str(err), re.IGNORECASE)
        return (f"out of memory{f' (asked for {asked.group(1)})' if asked else ''}: lower "
                "--batch-size or --hidden-dim (or --n-layer, --pad-rows), or run on a device with more memory")
    return None


# --- Before the run: the device line, the config line, the output folder -------------


def prepare_run(args, device, argv=()):
    """Print the device and the config, check --out-dir, tune the CPU; return amp_context's Precision.
    --resume and --eval-only first take the model flags checkpoint.pt records, so both lines are true.
    """
    if args.resume or args.eval_only:
        path = checkpoint_path(args.out_dir)
        use_recorded_model(path, load_checkpoint(path, args), args, typed_keys(argv))
    precision = amp_context(device, args.amp)
    print(f"device: {device}" + (f" ({precision.label})" if precision.label else ""))
    hint = cuda_hint() if args.device == "auto" and device.type == "cpu" else None  # a GPU left unused: say why
    notes = [hint, precision.note]
    if device.type == "mps" and args.n_layer >= 2 and args.dropout > 0:  # a known nn.LSTM bug (README: "Apple GPUs")
        notes.append("warning: nn.LSTM's dropout between layers gives silently wrong results on MPS "
                     "(pytorch/pytorch #180744, #190056); for numbers you can trust use --device cpu or --dropout 0")
    for line in notes:
        if line:
            print(line)
    print("config: " + " ".join(f"{key}={value}" for key, value in vars(args).items()))
    try:  # fail now, not after 30 epochs, if the checkpoint and figures cannot be written
        os.makedirs(args.out_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=args.out_dir):
            pass
    except OSError as err:
        raise RunError(f"cannot write to --out-dir {args.out_dir}: {err.strerror or err}") from None
    keep_cpu_buffers()
    return precision


# --- A CPU-only PyTorch on a machine with an NVIDIA GPU ---------------------------------
# The PyPI wheels of torch for Windows are CPU-only: `pip install -r requirements.txt` there gives a torch that
# cannot use the GPU, and the run quietly takes 30 epochs on the CPU. prepare_run prints why in one line.
NVIDIA_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidia0")  # Linux's; elsewhere nvidia-smi on the PATH


def cuda_hint(driver_files=NVIDIA_DRIVER_FILES):
    """Why a machine with an NVIDIA GPU trains on the CPU, in one line; None where there is no sign of one.
    Cheap checks only: nvidia-smi on the PATH or the Linux driver's files, and torch.version.cuda."""
    import shutil  # only some runs need it
    try:
        has_gpu = shutil.which("nvidia-smi") is not None or any(os.path.exists(f) for f in driver_files)
    except (OSError, ValueError):  # an unreadable PATH entry: no hint rather than a traceback
        has_gpu = False
    if torch.cuda.is_available() or not has_gpu:
        return None
    if torch.version.cuda is None:
        return (f"note: this machine has an NVIDIA GPU, but this PyTorch ({torch.__version__}) is a CPU-only build; "
                'install the CUDA build to train on the GPU (README: "The CUDA build of PyTorch")')
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = ("no device is visible to it" if visible is None else
              f"CUDA_VISIBLE_DEVICES={visible!r} (the GPUs CUDA may use) names none it can use")
    return (f"note: this machine has an NVIDIA GPU and this PyTorch has CUDA {torch.version.cuda}, but CUDA is "
            f"unusable: the NVIDIA driver may be too old for CUDA {torch.version.cuda}, or {hidden} "
            "(nvidia-smi shows the driver and its CUDA version)")


def keep_cpu_buffers():
    """Stop glibc returning the LSTM's work buffers (several MB per step) to the OS after every step,
    which makes each step pay again for fresh pages (README has the profile). Linux with glibc only.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: 32 MiB, the most glibc allows
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: keep up to 256 MiB of free heap
    except (OSError, AttributeError):  # not Linux, or another C library (musl): leave it as it is
        pass


# --- The data files: download when missing, then check before decoding ----------------

# The four files torchvision reads from <data-dir>/<MNIST or FashionMNIST>/raw/.
SPLIT_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def ensure_raw_files(data_dir, class_name, train):
    """Download the four raw files if any is missing, then check the two of this split."""
    from torchvision import datasets
    raw_folder = Path(data_dir) / class_name / "raw"
    all_files = SPLIT_FILES[True] + SPLIT_FILES[False]
    if not all((raw_folder / name).is_file() for name in all_files):
        try:
            getattr(datasets, class_name)(data_dir, train=train, download=True)  # fetches all four files
        except Exception as err:  # no network, a read-only folder, a server error
            # torchvision lists each mirror it tried: last_line holds the actual error.
            raise RunError(f"{class_name} files missing in {raw_folder} and the download failed ({last_line(err)}); "
                           f"put {', '.join(all_files)} there (uncompressed) or pass --data-dir") from None
    for name, n_dims in zip(SPLIT_FILES[train], (3, 1)):  # the images, then the labels
        check_idx_file(raw_folder / name, n_dims)


def check_idx_file(path, n_dims):
    """Raise RunError naming `path` unless it is a complete uint8 IDX file of `n_dims` dims."""
    with open(path, "rb") as f:
        header = f.read(4 + 4 * n_dims)
    # IDX header: two zero bytes, a type code (0x08 = unsigned byte), the number of
    # dimensions, then each dimension as a big-endian 32-bit integer.
    if len(header) < 4 + 4 * n_dims or header[:4] != bytes([0, 0, 8, n_dims]):
        raise RunError(f"{path} is not an MNIST IDX file (bad header); replace it with a fresh copy")
    dims = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims)]
    expected = len(header) + math.prod(dims)
    actual = os.path.getsize(path)
    if actual != expected:
        raise RunError(f"{path} is truncated or corrupted ({actual} bytes, its header promises {expected}); "
                       f"replace it with a fresh copy")
    if n_dims == 3 and dims[1:] != [SEQ_LEN, IN_DIM]:
        raise RunError(f"{path} holds {dims[1]}x{dims[2]} images, not 28x28; replace it")
    if dims[0] == 0:
        raise RunError(f"{path} holds no {'images' if n_dims == 3 else 'labels'} (its header says 0); "
                       f"replace it with a fresh copy")


def check_labels(data, data_dir, class_name, train):
    """Make `data` hold the raw files' data (an older torchvision's processed/*.pt would be loaded
    instead); raise RunError unless each image has a class label.
    """
    from torchvision.datasets.mnist import read_image_file, read_label_file
    images_file, labels_file = (Path(data_dir) / class_name / "raw" / name for name in SPLIT_FILES[train])
    if os.path.exists(data.processed_folder):
        data.data, data.targets = read_image_file(str(images_file)), read_label_file(str(labels_file))
    if len(data.data) != len(data.targets):
        raise RunError(f"{images_file} has {len(data.data)} images but {labels_file} has {len(data.targets)} "
                       f"labels; replace both with matching copies")
    if int(data.targets.max()) >= N_CLASS:
        raise RunError(f"{labels_file} holds labels above {N_CLASS - 1}; replace it")


# --- The run state and checkpoint.pt ---------------------------------------------------

CHECKPOINT_NAME = "checkpoint.pt"  # in --out-dir, rewritten after every epoch, for --resume
CHECKPOINT_FORMAT = "lstm_mnist checkpoint v2"  # tells our checkpoints from other files; raised with the layout
# The model flags, listed once: a checkpoint records them, and a reload or resume rebuilds exactly that model.
MODEL_FLAGS = ("hidden_dim", "n_layer", "dropout", "bidirectional", "bias", "batch_first", "cell", "pad_rows")
# The training flags the course of a run depends on: --resume must be given the same ones, or it
# would not repeat the run. (Not the recipe's name, the seed or --forget-bias: the checkpoint holds
# their effect. --epochs matters only to --one-cycle's plan, checked apart.)
RESUME_FLAGS = ("batch_size", "lr", "max_batches", "amp", "val_size", "one_cycle", "weight_decay",
                "label_smoothing", "augment", "ema")


def model_hparams(args):
    return {key: getattr(args, key) for key in MODEL_FLAGS}


def checkpoint_path(out_dir):
    return Path(out_dir) / CHECKPOINT_NAME


class RunState:
    """Everything a run carries from epoch to epoch, saved whole as checkpoint.pt: state_dict() is the
    checkpoint's layout (CHECKPOINT_LAYOUT checks it on reading), load_state_dict() reads it back."""

    def __init__(self, model, optimizer, levers, loaders, args):
        self.model, self.optimizer, self.levers, self.generator = model, optimizer, levers, loaders["generator"]
        self.hparams, self.dataset, self.out_dir = model_hparams(args), args.dataset, args.out_dir
        # What the run's course depends on (RESUME_FLAGS, the steps per epoch), and for the record what it does not.
        self.settings = {key: getattr(args, key) for key in [*RESUME_FLAGS, "epochs", "seed", "recipe", "forget_bias"]}
        self.settings["steps_per_epoch"] = len(loaders["train"])
        self.epoch, self.history = 0, []  # epochs done, and one dict of results per epoch
        self.saved_epoch = 0  # the epoch checkpoint.pt holds (0: none of this run yet)
        self.run_id = os.urandom(8).hex()  # which run checkpoint.pt belongs to (--resume: the saved one's)
        self.kept = False  # True once keep_earlier_run has dealt with what the folder held
        print(describe_model(model))  # Part 2: the layer, its sizes and the number of parameters

    def end_epoch(self, epoch, train_loss, train_acc, split, eval_loss, eval_acc, seconds):
        """Record a finished epoch in the history (checkpoint.pt and curves.png read it)."""
        self.epoch = epoch
        self.history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                             f"{split}_loss": eval_loss, f"{split}_acc": eval_acc, "seconds": seconds,
                             "label_smoothing": self.levers.label_smoothing})  # curves.png says so

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def tested(self):
        """The model each epoch tests and section 6 saves: the trained one, or with --ema its average."""
        return self.levers.ema.module if self.levers.ema else self.model

    def state_dict(self):
        ema, scheduler = self.levers.ema, self.levers.scheduler
        return {
            "format": CHECKPOINT_FORMAT,
            "dataset": self.dataset,
            "hparams": self.hparams,
            "settings": self.settings,
            "epoch": self.epoch,
            "history": self.history,
            "model": self.tested.state_dict(),  # what RNN.pth gets (with --ema, the average)
            "trained_weights": self.model.state_dict() if ema else None,  # --ema: the weights training goes on from
            "ema_updates": int(ema.n_averaged) if ema else 0,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler else None,
            "scaler": self.levers.scaler.state_dict(),  # float16 --amp's loss scale ({} when off)
            # What the next epoch draws from (on a GPU, the run's GPU's state too): a resume repeats it.
            "rng": {"torch": torch.get_rng_state(), "data_order": self.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None},
            # The run folder's record (see PAIRS); RNN.pth follows a finished one, read_pair checks that it did.
            "run": {"id": self.run_id, "finished": self.epoch >= self.settings["epochs"]},
        }

    def load_state_dict(self, checkpoint):
        ema, scheduler, scaler = self.levers.ema, self.levers.scheduler, self.levers.scaler
        if ema:
            ema.module.load_state_dict(checkpoint["model"])  # the average so far
            ema.n_averaged.fill_(checkpoint["ema_updates"])
        self.model.load_state_dict(checkpoint["trained_weights"] if ema else checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler:
            scheduler.load_state_dict(checkpoint["scheduler"])
        if scaler.is_enabled() and checkpoint["scaler"]:  # empty when the saving run did not scale
            scaler.load_state_dict(checkpoint["scaler"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        self.generator.set_state(checkpoint["rng"]["data_order"])
        if checkpoint["rng"]["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"], self.device)
        self.epoch = self.saved_epoch = checkpoint["epoch"]
        self.history, self.run_id = checkpoint["history"], checkpoint["run"]["id"]


def save_checkpoint(run, out_dir):
    """checkpoint.pt in `out_dir`: the whole run state, safe against Ctrl-C mid-save; returns the path."""
    path = checkpoint_path(out_dir)
    # A run's first save: keep_earlier_run deals with what the folder held once the new file is complete.
    with atomic_file(path, before_replace=None if run.kept else lambda: keep_earlier_run(run)) as f:
        torch.save(run.state_dict(), f)
    run.kept, run.saved_epoch = True, run.epoch
    print(f"saved {path}")
    return path


# --- The run folder: which run each file belongs to, recorded when it happens ----------
# checkpoint.pt records the run it belongs to (an id drawn when the run starts) and whether that
# run has trained every epoch it was asked for. RNN.pth belongs to it when it holds the weights
# checkpoint.pt records, compared tensor by tensor: then the two are a pair. A finished run is a
# pair whose record says finished. What the folder holds changes only here, when a run's first
# save is about to replace checkpoint.pt:
#
#   checkpoint.pt holds          what happens to checkpoint.pt and RNN.pth
#   a finished run               both -> *.previous.* (also this run, extended by --resume --epochs)
#   this run, unfinished         stay; an RNN.pth that is not its pair (an earlier epoch) is removed
#   another run, unfinished      -> checkpoint.unfinished.pt (+ RNN.unfinished.pth if its pair)
#   nothing, or an unreadable file  what is there -> *.unfinished.* (a lone RNN.pth: the tutorial's own)
#
# A kept pair replaces the older files of its kind; the renames are all or nothing. So the last
# finished run is always whole: as checkpoint.pt + RNN.pth, or as *.previous.*.
PAIRS = {"current": (CHECKPOINT_NAME, "RNN.pth"), "previous": ("checkpoint.previous.pt", "RNN.previous.pth"),
         "unfinished": ("checkpoint.unfinished.pt", "RNN.unfinished.pth")}


def read_pair(out_dir, kind="current"):
    """What one pair of files in `out_dir` records: a dict of the two paths, the checkpoint's
    `record` (None if absent, {} if unreadable), `paired` (RNN.pth holds its weights) and `finished`."""
    checkpoint, weights = (Path(out_dir) / name for name in PAIRS[kind])
    try:
        record = read_weights_only(checkpoint) if checkpoint.is_file() else None
    except RunError:  # damaged or not ours: kept all the same, never called a pair
        record = {}
    record = record if isinstance(record, (dict, type(None))) else {}
    try:  # RNN.pth pairs with checkpoint.pt when it holds exactly the tensors the record holds
        saved, model = read_weights_only(weights) if weights.is_file() else None, (record or {}).get("model")
        paired = isinstance(saved, dict) and isinstance(model, dict) and saved.keys() == model.keys() and all(
            torch.equal(saved[key], model[key]) for key in saved)
    except RunError:  # unreadable weights pair with nothing
        paired = False
    return {"checkpoint": checkpoint, "weights": weights, "record": record, "paired": paired,
            "finished": paired and run_record(record)["finished"]}


def run_record(record):
    """A checkpoint's record of its run, {"id", "finished"}. A checkpoint written before the record
    kept one counts as finished once it holds every epoch it planned, as the version that wrote it judged."""
    if isinstance(record.get("run"), dict):
        return record["run"]
    return {"id": None, "finished": record.get("epoch", 0) >= record.get("settings", {}).get("epochs", math.inf)}


def epochs_of(record):
    """'2 epochs', or for an unfinished run 'epoch 1 of 3': how far the run in `record` got."""
    done, planned = record.get("epoch", 0), record.get("settings", {}).get("epochs", 0)
    if run_record(record)["finished"] or done >= planned:
        return f"{done} epoch{'s' if done != 1 else ''}"
    return f"epoch {done} of {planned}"


def keep_earlier_run(run):
    """What this run's first save does to the files it replaces (the table above)."""
    here = read_pair(run.out_dir)
    record, weights = here["record"], here["weights"]
    if here["finished"]:
        whose = "this run" if run_record(record)["id"] == run.run_id else "the finished run before this one"
        return keep(run.out_dir, "previous", f"{whose} ({epochs_of(record)})")
    if weights.is_file() and record and not here["paired"]:
        weights.unlink()  # not the weights checkpoint.pt records: they would pair with nothing
        print(f"removed {weights}: it did not hold the weights {here['checkpoint']} records")
    if record is None and not weights.is_file():
        return
    if record is None or run_record(record)["id"] != run.run_id:
        what = ("the files before this run" if not record else f"the run before this one ({epochs_of(record)}, its "
                f"RNN.pth missing)" if run_record(record)["finished"] else f"the unfinished run before this one "
                f"({epochs_of(record)})")
        keep(run.out_dir, "unfinished", what)


def keep(out_dir, kind, what):
    """Rename the current pair's files to `kind`'s names, both or neither; print what was kept."""
    moves = [(Path(out_dir) / a, Path(out_dir) / b) for a, b in zip(PAIRS["current"], PAIRS[kind])
             if (Path(out_dir) / a).exists()]
    staged = []
    try:  # first to temporary names, so that a rename that fails can be undone
        for source, target in moves:
            staged.append((source, target.with_name(target.name + ".keep.tmp"), target))
            os.replace(source, staged[-1][1])
    except OSError as err:
        for source, tmp, _ in reversed(staged[:-1]):
            os.replace(tmp, source)
        names = " and ".join(str(source) for source, _ in moves)
        raise RunError(f"cannot keep {what} as *.{kind}.* ({err.filename}: {err.strerror}); nothing was "
                       f"changed: {names} still hold it, and this run saved nothing") from None
    for name in PAIRS[kind]:
        (Path(out_dir) / name).unlink(missing_ok=True)  # the older files of this kind
    for _, tmp, target in staged:
        os.replace(tmp, target)
    previous = read_pair(out_dir, "previous")
    stays = (f"; the last finished run stays in {previous['checkpoint']} and {previous['weights'].name}"
             if kind == "unfinished" and previous["finished"] else "")
    print(f"kept {what} as {' and '.join(str(target) for _, target in moves)}{stays}")


@contextlib.contextmanager
def atomic_file(path, before_replace=None):
    """A file to write `path` through: the data goes to a temporary file in the same folder, renamed
    over `path` once complete (atomic), so a crash, Ctrl-C or a full disk keeps the old file.
    `before_replace` runs just before the rename.
    """
    # Named before it exists, so that a Ctrl-C at any point of the write still finds it to remove;
    # one writer per process. Made by open(), so it follows the umask as the figures do.
    tmp_name = Path(path).with_name(f"{Path(path).name}.{os.getpid()}.tmp")
    try:
        with open(tmp_name, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if before_replace:
            before_replace()
        os.replace(tmp_name, path)
    except (OSError, RuntimeError) as err:  # a full disk, a file size limit, a file held open (Windows)
        if isinstance(err, RuntimeError) and not TORCH_WRITE_FAILED.search(str(err)):
            raise  # not a write that failed: a bug, with its traceback
        kept = (f"the {Path(path).name} already there is intact" if Path(path).exists()
                else "nothing was written")
        raise RunError(f"cannot write {path} ({write_failure(err, path)}); {kept}") from None
    finally:
        tmp_name.unlink(missing_ok=True)


# torch.save writes through its own C++ writer, which reports a full disk or a file size limit
# as a RuntimeError ("unexpected pos ...", "failed writing file ..."), without the OS's reason.
TORCH_WRITE_FAILED = re.compile(r"unexpected pos|failed writing|PytorchStreamWriter|file write failed")


def write_failure(err, path):
    """Why writing `path` failed, in a few words: the OS's reason, or what the folder shows."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    import shutil
    if shutil.disk_usage(Path(path).parent).free < 64 << 20:
        return os.strerror(28)  # "No space left on device"
    try:
        import resource  # Unix only
        if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
            return os.strerror(27)  # "File too large": a limit on the size of the files this process writes
    except ImportError:
        pass
    return last_line(err)


def load_checkpoint(path, args, checkpoint=None):
    """The checkpoint at `path` as a dict (`checkpoint`: already read from it), after checking that this
    script wrote it for this data set."""
    if checkpoint is None and not Path(path).is_file():
        raise RunError(f"no checkpoint at {path}; train first (without --eval-only / --resume)")
    checkpoint = read_weights_only(path) if checkpoint is None else checkpoint
    if not isinstance(checkpoint, dict) or not str(checkpoint.get("format")).startswith("lstm_mnist checkpoint"):
        raise RunError(f"{path} is not a checkpoint written by lstm_mnist.py")
    if isinstance(checkpoint.get("hparams"), dict):  # written before --cell and --pad-rows: an LSTM, no zero rows
        checkpoint["hparams"] = {"cell": "lstm", "pad_rows": 0, **checkpoint["hparams"]}
    checkpoint["run"] = run_record(checkpoint)  # written before the run's record: judged as it was
    if checkpoint["format"] != CHECKPOINT_FORMAT:
        raise RunError(f"{path} was written by another version of lstm_mnist.py ({checkpoint['format']}; this one "
                       f"reads {CHECKPOINT_FORMAT}); train again, or use the version that wrote it")
    if problem := layout_problem(checkpoint):
        raise RunError(f"{path} is not a checkpoint written by lstm_mnist.py, or it is damaged: {problem}")
    if checkpoint["dataset"] != args.dataset:
        raise RunError(f"{path} was trained on {checkpoint['dataset']}, not {args.dataset}; "
                       f"pass --dataset {checkpoint['dataset']}")
    return checkpoint


def use_recorded_model(path, checkpoint, args, typed):
    """Set args' model flags to those `checkpoint` records; a model flag typed otherwise is refused."""
    refuse_changes(path, checkpoint["hparams"], args, MODEL_FLAGS,
                   "leave {flag} out (the model is read from {name}) or pass ", typed)
    vars(args).update((key, checkpoint["hparams"][key]) for key in MODEL_FLAGS)


def read_weights_only(path):
    """torch.load(path) of tensors and plain containers only (checkpoint.pt, RNN.pth), or RunError."""
    try:
        # weights_only=True only rebuilds tensors and plain containers: a file that
        # asks for any other Python object is refused before any of its code runs.
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:  # unreadable (Permission denied ...): one_line_errors names the file and why
        raise
    except Exception as err:
        # The weights-only unpickler names the Python object it refused as a "GLOBAL".
        if refused := re.search(r"GLOBAL ([\w.]+)", str(err)):
            raise RunError(f"{path} refused: it asks for the Python object {refused.group(1)}, which "
                           f"could run code; load only checkpoints this script wrote") from None
        raise RunError(f"{path} is not a readable PyTorch checkpoint (truncated or another kind of file)") from None


# checkpoint.pt's layout, as RunState.state_dict() writes it: every key and the type of its value.
CHECKPOINT_LAYOUT = {
    "format": str, "dataset": str, "hparams": dict, "settings": dict, "epoch": int, "history": list,
    "model": dict, "trained_weights": (dict, type(None)), "ema_updates": int, "optimizer": dict,
    "scheduler": (dict, type(None)), "scaler": dict, "rng": dict, "run": dict,
}


def layout_problem(checkpoint):
    """What does not match CHECKPOINT_LAYOUT, in a few words; None if the checkpoint has the layout."""
    for key, kind in CHECKPOINT_LAYOUT.items():
        if not isinstance(checkpoint.get(key), kind):
            return f"{key!r} is missing or of the wrong type"
    missing = (set(MODEL_FLAGS) - checkpoint["hparams"].keys()) or \
        ({*RESUME_FLAGS, "epochs", "steps_per_epoch"} - checkpoint["settings"].keys())
    if missing:
        return f"its record of the flags lacks {sorted(missing)[0]!r}"
    # Each row holds what curves.png reads: the training's numbers and those of the set each epoch
    # was measured on (the test set, or with --val-size the held-out images).
    split = "val" if checkpoint["settings"]["val_size"] else "test"
    row_keys = ["epoch", "train_loss", "train_acc", f"{split}_loss", f"{split}_acc"]
    history = checkpoint["history"]
    if checkpoint["epoch"] < 0 or len(history) != checkpoint["epoch"] or not all(
            isinstance(row, dict) and all(isinstance(row.get(k), (int, float)) for k in row_keys)
            for row in history):
        return (f"its history does not hold one row of {', '.join(row_keys)} per epoch "
                f"({checkpoint['epoch']} epochs)")
    rng = checkpoint["rng"]
    if not (isinstance(rng.get("torch"), torch.Tensor) and isinstance(rng.get("data_order"), torch.Tensor)
            and isinstance(rng.get("cuda"), (torch.Tensor, type(None)))):
        return "its random state is incomplete"
    return None


def refuse_changes(path, saved, args, keys, advice, typed=None):
    """Raise RunError naming the first of `keys` whose value differs from the record `saved`, and the value
    to pass. With `typed` (the model flags): only a typed flag must agree, and a value of another type is damage."""
    for key in keys:
        value, asked = saved.get(key), getattr(args, key)
        if type(value) is not type(asked) and (typed is not None or str(value) == str(asked)):
            raise RunError(f"{path} is damaged: it records {key} as {value!r}, a {type(value).__name__}; "
                           f"train again")  # 128 and "128": we never write that
        if value != asked and (typed is None or key in typed):
            flag = next(action.option_strings[0] for action in build_parser()._actions if action.dest == key)
            raise RunError(f"{path} was trained with {key}={value}, this run asks for {key}={asked} ({flag}); "
                           f"{advice.format(flag=flag, name=path.name)}{as_flag(key, flag, value, args)}")


def as_flag(key, flag, value, args):
    """How to ask for `value` on the command line: '--lr 0.001', '--augment', 'no --max-batches'."""
    if flag.startswith("--no-"):  # --no-bias asks for bias=False; bias=True is the flag left out
        return flag if value is False else f"no {flag}"
    if value is None or value is False:
        also = f" (and no --recipe {args.recipe}, which sets it)" if RECIPES[args.recipe].get(key) else ""
        return f"no {flag}{also}"
    return flag if value is True else f"{flag} {value}"


def load_weights(model, state_dict, path, misfit="the model the checkpoint records"):
    """model.load_state_dict(state_dict), or one line saying why the weights from `path` do not fit."""
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, KeyError, TypeError, AttributeError) as err:
        raise RunError(f"{path}: its weights do not fit {misfit} ({last_line(err)})") from None
    return model


def last_line(err):
    """The last line of an exception's message (PyTorch's lists end with the cause), or its type."""
    text = str(err).strip()
    return text.splitlines()[-1].strip() if text else type(err).__name__


# --- Resume and interrupts ------------------------------------------------------------


def start_run(model, optimizer, loaders, args, precision):
    """The RunState of this run, with the levers its flags ask for; --resume / --eval-only reload it."""
    levers = Levers(model, optimizer, args, len(loaders["train"]), precision)
    run = RunState(model, optimizer, levers, loaders, args)
    if args.resume or args.eval_only:
        restore(run, args)
    return run


def restore(run, args):
    """--resume: the whole run state from checkpoint.pt; --eval-only: only its tested weights and record."""
    path = checkpoint_path(args.out_dir)
    checkpoint = load_checkpoint(path, args)  # refuses a damaged file, another data set, another model
    if args.eval_only:
        load_weights(run.tested, checkpoint["model"], path)
        run.settings, run.history = checkpoint["settings"], checkpoint["history"]
        run.epoch = run.saved_epoch = checkpoint["epoch"]
        return
    saved = checkpoint["settings"]
    # A resumed run repeats the original only with the same course: refuse before anything is written.
    refuse_changes(path, saved, args, RESUME_FLAGS, "resume with the flags it was trained with: ")
    if args.one_cycle and saved["epochs"] != args.epochs:
        raise RunError(f"{path} follows a one-cycle schedule planned for {saved['epochs']} epochs; "
                       f"resume with --epochs {saved['epochs']}")
    if saved["steps_per_epoch"] != run.settings["steps_per_epoch"]:
        raise RunError(f"{path} was trained with {saved['steps_per_epoch']} steps per epoch, this run has "
                       f"{run.settings['steps_per_epoch']}: the training images differ; use the same --data-dir")
    try:
        run.load_state_dict(checkpoint)
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as err:  # optimizer, ...
        raise RunError(f"{path} is damaged: the run state it holds does not load "
                       f"({last_line(err)})") from None
    # The record stays the original run's: its seed, recipe and forget bias, whatever this run asks.
    run.settings = {**run.settings, **saved, "epochs": args.epochs}
    print(f"resuming after epoch {checkpoint['epoch']} from {path}")
    if checkpoint["epoch"] >= args.epochs:
        more = ("its one-cycle schedule is complete" if args.one_cycle
                else "raise --epochs to train more")
        print(f"the checkpoint already has {epochs_of({'epoch': checkpoint['epoch']})}; {more}")
        if not checkpoint["run"]["finished"]:  # --resume --epochs below the planned: it ends here
            save_checkpoint(run, args.out_dir)  # the record says so before RNN.pth is written


@contextlib.contextmanager
def explain_interrupt(run, argv, ctrl_c):
    """Ctrl-C during training says what was kept and how to resume; after training (final test,
    figures), how to finish without training again (one_line_errors prints ctrl_c["note"]).
    """
    path = checkpoint_path(run.out_dir)
    try:
        yield
    except KeyboardInterrupt:
        if run.saved_epoch == 0:
            raise KeyboardInterrupt("interrupted during the first epoch; nothing was saved") from None
        resume = shell_command(argv if "--resume" in argv else [*argv, "--resume"])
        raise KeyboardInterrupt(f"interrupted during epoch {run.saved_epoch + 1}; {path} holds epoch "
                                f"{run.saved_epoch} intact; continue with: {resume}") from None
    rest = [arg for arg in argv if arg != "--resume"]  # --compare-cells: --resume finishes every cell
    finish = shell_command([*rest, "--resume" if "--compare-cells" in argv else "--eval-only"])
    every = "all " if run.epoch > 1 else ""
    ctrl_c["note"] = (f"interrupted after training: {path} holds {every}{epochs_of({'epoch': run.epoch})}; "
                      f"finish the final test and the figures with: {finish}")


def shell_command(argv):
    """The command that runs this script with `argv` from any folder, quoted for this system."""
    import subprocess  # only for Windows' quoting
    words = [sys.executable or "python", str(Path(__file__).resolve()), *argv]
    return subprocess.list2cmdline(words) if sys.platform == "win32" else shlex.join(words)


# --- The command line: every flag overrides one entry of DEFAULTS ------------------


class HelpFormatter(argparse.HelpFormatter):
    def _split_lines(self, text, width):
        """Wrap help text without breaking a flag such as --label-smoothing at its hyphen."""
        import textwrap
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        """A usage error is one line and exit code 2, not the whole usage text."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def checked(convert, is_valid, expected):
    """An argparse type: convert the text, then refuse a value that is not `expected`."""

    def parse(text):
        try:
            if is_valid(value := convert(text)):
                return value
        except ValueError:  # not a number at all
            pass
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")

    return parse


positive_int = checked(int, lambda value: value >= 1, "a positive whole number")
whole_number = checked(int, lambda value: value >= 0, "a whole number, 0 or more")
positive_float = checked(float, lambda value: math.isfinite(value) and value > 0, "a positive finite number")
probability = checked(float, lambda value: 0 <= value < 1, "a number in [0, 1)")
non_negative_float = checked(float, lambda value: math.isfinite(value) and value >= 0, "a number, 0 or more")
seed_number = checked(int, lambda value: 0 <= value < 2**64, "a whole number from 0 to 2**64 - 1")


def build_parser():
    parser = OneLineParser(prog="lstm_mnist.py", formatter_class=HelpFormatter,
                           description="Train a 2-layer LSTM on MNIST row by row, save it, reload it, test it, plot it.")
    recipe = parser.add_argument_group("the tutorial's recipe")
    recipe.add_argument("--epochs", type=positive_int, metavar="N", help="passes over the training set")
    recipe.add_argument("--batch-size", type=positive_int, metavar="N", help="images per training step")
    recipe.add_argument("--lr", type=positive_float, metavar="LR", help="Adam learning rate")
    lstm = parser.add_argument_group("nn.LSTM's parameters")
    lstm.add_argument("--hidden-dim", type=positive_int, metavar="N", help="hidden_size: features in h_t and c_t")
    lstm.add_argument("--n-layer", type=positive_int, metavar="N", help="num_layers: stacked LSTM layers")
    lstm.add_argument("--dropout", type=probability, metavar="P",
                      help="dropout between LSTM layers, in [0, 1); needs --n-layer 2 or more")
    lstm.add_argument("--bidirectional", action="store_true",
                      help="also read each image bottom-up; classify from both final hidden states (default: off)")
    lstm.add_argument("--no-bias", dest="bias", action="store_false",
                      help="bias=False: drop the LSTM's bias terms (default: biases on)")
    lstm.add_argument("--no-batch-first", dest="batch_first", action="store_false",
                      help="batch_first=False: feed (seq, batch, feature) (default: (batch, seq, feature))")
    lstm.add_argument("--show-shapes", action="store_true",
                      help="print the shapes of input, h_0, c_0, output, h_n, c_n for one batch, then exit")
    cells = parser.add_argument_group("why an LSTM: a plain RNN and a GRU beside it (Part 2)")
    cells.add_argument("--cell", choices=list(CELLS), help="the recurrent layer: lstm (the tutorial's nn.LSTM), "
                       "gru (nn.GRU) or rnn (nn.RNN, tanh), with the same sizes and flags")
    cells.add_argument("--pad-rows", type=whole_number, metavar="K",
                       help="K rows of zeros after each image's 28: the model answers K steps after the digit")
    cells.add_argument("--compare-cells", action="store_true", help="train lstm, gru and rnn one after another "
                       "with the same flags, in --out-dir/<cell>; print one table, draw cells.png (default: off)")
    cells.add_argument("--seeds", type=seed_number, nargs="+", metavar="N", help="with --compare-cells: each cell "
                       "once per seed, in --out-dir/<cell>-seed<N>, and the mean over the seeds (default: --seed)")
    run = parser.add_argument_group("the run")
    run.add_argument("--dataset", choices=list(DATASETS), help="which torchvision data set")
    run.add_argument("--data-dir", metavar="DIR",
                     help="folder holding MNIST/raw/ (or FashionMNIST/raw/); downloaded there if missing")
    run.add_argument("--out-dir", metavar="DIR", help="folder for the checkpoint and the figures")
    run.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="auto = CUDA, else Apple MPS, else CPU")
    run.add_argument("--seed", type=seed_number, metavar="N", help="random seed: weights, data order, dropout")
    run.add_argument("--log-interval", type=positive_int, metavar="N",
                     help="print the running loss every N training batches")
    run.add_argument("--max-batches", type=positive_int, metavar="N", help="stop each epoch after N batches and "
                     "test on as many test images, for a quick look (default: whole epochs)")
    run.add_argument("--amp", action="store_true", help="mixed precision: bfloat16 autocast on NVIDIA GPUs with "
                     "bfloat16 arithmetic, else float16 with gradient scaling; bfloat16 on CPUs with bfloat16 "
                     "instructions (default: off, float32)")
    run.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out-dir up to --epochs")
    run.add_argument("--eval-only", action="store_true",
                     help="skip training: reload the checkpoint in --out-dir, test it, draw the figures")
    run.add_argument("--show", action="store_true", help="also open the figures in windows")
    # No default: left out of args (and so of the config line) unless given.
    run.add_argument("--predict", nargs="+", metavar="PATH", default=argparse.SUPPRESS, help="train nothing: "
                     "read your own images of handwritten digits (files or folders of PNG, JPEG, BMP, GIF, WebP, TIFF) "
                     "the way MNIST's were made, print what the model in --out-dir says, and draw predict.png")
    run.add_argument("--draw", action="store_true", default=argparse.SUPPRESS, help="train nothing: write a digit "
                     "with the mouse and watch the model in --out-dir read it row by row (needs a window: a "
                     "desktop, or Jupyter with ipympl)")
    beyond = parser.add_argument_group("beyond the tutorial's recipe (opt-in; --recipe sets several at once)")
    beyond.add_argument("--recipe", choices=list(RECIPES), help=f"fast: {recipe_flags('fast')}; best: "
                        f"{recipe_flags('best')}; flags given on their own still override it")
    beyond.add_argument("--val-size", type=whole_number, metavar="N", help="hold out N training images and report "
                        "on them each epoch, to choose settings without looking at the test set (default: 0, off)")
    beyond.add_argument("--one-cycle", action="store_true", help=f"OneCycleLR: from 0.2x --lr up to "
                        f"{ONE_CYCLE_PEAK}x --lr and down to ~0 over --epochs, Adam's beta1 0.95 -> 0.85 -> 0.95; "
                        f"gradient norm clipped at {CLIP_NORM} (default: off, constant lr)")
    beyond.add_argument("--weight-decay", type=non_negative_float, metavar="WD",
                        help="AdamW with this decoupled weight decay (default: 0, plain Adam)")
    beyond.add_argument("--label-smoothing", type=probability, metavar="EPS",
                        help="CrossEntropyLoss(label_smoothing=EPS), in [0, 1) (default: 0, off)")
    beyond.add_argument("--augment", action="store_true", help=f"warp each training batch at random: shift up "
                        f"to {AUGMENT_SHIFT:g} px, rotate up to {AUGMENT_ROTATE:g} degrees, scale by up to "
                        f"{AUGMENT_SCALE * 100:g}%% (default: off)")
    beyond.add_argument("--ema", type=probability, metavar="DECAY",
                        help="test and save a moving average of the weights with this decay, e.g. 0.999 (default: 0)")
    beyond.add_argument("--forget-bias", type=non_negative_float, metavar="B", help="add B to every forget gate's "
                        "bias before training, e.g. 1, so the LSTM forgets less at first (default: 0)")
    # Every default from its block (DEFAULTS and the parts' own); "(default: ...)" where the help has none.
    parser.set_defaults(**DEFAULTS, **CELL_DEFAULTS, **BEYOND_DEFAULTS)
    for action in parser._actions:
        shown = action.nargs != 0 and action.default not in (None, argparse.SUPPRESS)  # not --show, --predict
        if shown and "default" not in action.help:
            action.help += " (default: %(default)s)"
    return parser


def recipe_flags(name):
    """The flags a --recipe stands for, as a user would type them."""
    return " ".join("--" + key.replace("_", "-") + ("" if value is True else f" {value:g}")
                    for key, value in RECIPES[name].items())


def command_line(argv):
    """The arguments to parse: `argv` if given, else sys.argv[1:], except in a Jupyter kernel, whose
    sys.argv is its own (['.../ipykernel_launcher.py', '-f', '...json']): then none. %run passes its flags.
    """
    if argv is not None:
        return [str(arg) for arg in argv]
    if "ipykernel" in sys.modules and is_kernel_command_line(sys.argv):
        print("note: in a notebook main() ignores the kernel's command line and runs with the defaults; "
              "pass flags as main(['--epochs', '1'])")
        return []
    return sys.argv[1:]


def is_kernel_command_line(argv):
    """True for a Jupyter kernel's sys.argv, False for a script's (under %run too)."""
    if argv and Path(argv[0]).name.endswith("kernel_launcher.py"):  # ipykernel_launcher.py, colab_kernel_launcher.py
        return True
    # Other launchers still hand the kernel its connection file: `-f x.json` or `--f=x.json`.
    words = [f"{word}={after}" if word in ("-f", "--f") else word for word, after in zip(argv[1:], [*argv[2:], ""])]
    return any(word.startswith(("-f=", "--f=")) and word.endswith(".json") for word in words)


# What --draw refuses besides the other side trips: the flags that only training reads.
DRAW_REFUSES = ("dataset", "epochs", "batch_size", "lr", "log_interval", "max_batches", "resume", "eval_only",
                *BEYOND_DEFAULTS)


def parse_args(argv=None):
    """Parse and check every argument before any data is read or any epoch runs."""
    parser = build_parser()
    # A --recipe changes the defaults of the flags it stands for (in --help too); flags given
    # on the command line still override them, one by one.
    recipe_only = OneLineParser(prog=parser.prog, add_help=False)  # `--recipe` alone: one line
    recipe_only.add_argument("--recipe")
    recipe = recipe_only.parse_known_args(argv)[0].recipe
    parser.set_defaults(**RECIPES.get(recipe, {}))
    args = parser.parse_args(argv)
    if args.dropout > 0 and args.n_layer == 1:
        parser.error("argument --dropout: needs --n-layer 2 or more (nn.LSTM applies dropout "
                     "between layers, so with one layer it would do nothing)")
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if args.device in available and not available[args.device]():
        parser.error(f"argument --device: {args.device} is not available on this machine; use auto or cpu")
    if args.forget_bias and not args.bias:
        if RECIPES[args.recipe].get("forget_bias") == args.forget_bias:  # the recipe's, not typed
            parser.error(f"argument --no-bias: --recipe {args.recipe} opens the forget gates with --forget-bias "
                         f"{args.forget_bias:g}, which needs the biases; add --forget-bias 0 to go without them")
        parser.error("argument --forget-bias: not allowed with --no-bias (there is no bias to raise)")
    if args.resume and args.eval_only:
        parser.error("argument --eval-only: not allowed with --resume; pick one")
    if args.forget_bias and (args.cell != "lstm" or args.compare_cells):
        also = f" (--recipe {args.recipe} sets it; add --forget-bias 0)" if RECIPES[args.recipe].get("forget_bias") else ""
        parser.error(f"argument --forget-bias: only an LSTM has forget gates, so not with "
                     f"{'--compare-cells' if args.compare_cells else '--cell ' + args.cell}{also}")
    if args.compare_cells and args.cell != "lstm":
        parser.error("argument --cell: not allowed with --compare-cells, which trains every cell")
    if args.seeds and not args.compare_cells:
        parser.error("argument --seeds: only with --compare-cells; for one run use --seed")
    # The flags that run something else than the tutorial's run (side_trip): one at a time.
    trips = [flag for flag, given in [("--show-shapes", args.show_shapes), ("--predict", "predict" in args),
                                      ("--draw", "draw" in args), ("--compare-cells", args.compare_cells)] if given]
    if len(trips) > 1:
        parser.error(f"argument {trips[1]}: not allowed with {trips[0]}; pick one")
    if "predict" in args and (args.resume or args.eval_only):
        parser.error(f"argument --predict: not allowed with {'--resume' if args.resume else '--eval-only'}: "
                     "it trains nothing and reads the model in --out-dir")
    if "draw" in args:  # Part 3: --draw trains nothing, and needs a window
        typed = typed_keys(argv)
        if given := [key for key in DRAW_REFUSES if key in typed]:
            parser.error(f"argument --draw: not allowed with --{given[0].replace('_', '-')} (--draw trains nothing: "
                         f"it reads the model in --out-dir)")
        import matplotlib.pyplot as plt  # which picks the backend: Agg where there is no display
        if not (backend := plt.get_backend().lower()).startswith(WINDOW_BACKENDS):
            parser.error(f"argument --draw: needs a window for the mouse, but matplotlib's backend here is {backend} "
                         "(no display, or a notebook's inline plots); in Jupyter: pip install ipympl, then %matplotlib "
                         "widget; or write the digit on paper, photograph it, run --predict PHOTO")
    return args


def typed_keys(argv):
    """The args keys that `argv` sets itself (not left at a default, nor set by a --recipe)."""
    parser = build_parser()
    parser._defaults.clear()  # set_defaults' values
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
