"""The tutorial's own code and ours share RNN.pth, both ways: its class, pasted as it stands, loads our file."""

import torch
from conftest import lstm_mnist
from torch import nn


# The tutorial's class, verbatim (its text lost the indentation, restored here), `classifer` (sic) and all.
class RNN(nn.Module):
    def __init__(self, in_dim, hidden_dim, n_layer, n_class):
        super(RNN, self).__init__()
        self.lstm = nn.LSTM(in_dim, hidden_dim, n_layer, batch_first=True)
        self.classifer = nn.Linear(hidden_dim, n_class)

    def forward(self,x):
        out ,_ = self.lstm(x) # 輸出爲output(batch,seq_len, hidden_size * num_directions)
        out = out[:,-1,:] # seq=-1,即取每張圖片數據的最後一個h,即hn
        out = self.classifer(out) # hn後接全連線層,使用softmax損失函數
        return out # 返回最後的輸出


def test_the_tutorials_class_loads_our_rnn_pth_with_its_own_line(tiny_data, tmp_path, monkeypatch):
    out_dir = tmp_path / "out"
    result = lstm_mnist.main(["--device", "cpu", "--data-dir", str(tiny_data), "--out-dir", str(out_dir),
                              "--epochs", "1", "--max-batches", "2"])  # the tutorial's RNN(28, 128, 2, 10)
    monkeypatch.chdir(out_dir)
    model = RNN(28,128,2,10)
    model.load_state_dict(torch.load('./RNN.pth'))  # the tutorial's reload line, as it stands
    weights = torch.load("./RNN.pth", weights_only=True)
    assert all(tensor.device.type == "cpu" for tensor in weights.values())  # loads on any machine
    images, _ = lstm_mnist.load_split(tiny_data, "mnist", train=False)
    with torch.no_grad():
        assert torch.equal(model.eval()(images), result["model"].eval()(images))


def test_a_state_dict_saved_from_the_tutorials_class_loads_strictly_into_ours(tmp_path):
    torch.manual_seed(1)
    theirs = RNN(28,128,2,10)
    torch.save(theirs.state_dict(), tmp_path / "RNN.pth")  # the tutorial's save line
    ours = lstm_mnist.build_model({key: lstm_mnist.DEFAULTS[key] for key in lstm_mnist.MODEL_FLAGS})
    ours.load_state_dict(torch.load(tmp_path / "RNN.pth", weights_only=True), strict=True)
    images = torch.rand(7, 28, 28)
    with torch.no_grad():
        assert torch.equal(ours.eval()(images), theirs.eval()(images))
